"""The seven SuperGLUE tasks of the paper, each one small declaration.

Input text follows the paper's UnifiedQA-style schema (§E.2: "Passage / Question / Answer"),
one schema for every task. Unlike the paper's all-binary framing (inferred), CB keeps its
native 3-way labels and COPA its choice1/choice2 labels, so the API returns native labels.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from .base import RecordRows, Task, TaskError

YES_NO = ("No", "Yes")
BOOL_LABELS = ("False", "True")
BOOL_RAW = {False: "False", True: "True", 0: "False", 1: "True", "false": "False", "true": "True"}


def _qa(passage: str, question: str, answer: str | None = None, ask: str | None = None) -> str:
    parts = ["Passage:", passage.strip(), "Question:", question.strip()]
    if answer is not None:
        parts += ["Answer:", answer.strip()]
    if ask:
        parts.append(ask)
    return "\n".join(parts)


def _single(record: Mapping[str, Any], fields: tuple[str, ...]) -> RecordRows:
    """Rows for tasks with one example per record (everything but MultiRC)."""
    yield str(record["idx"]), {f: record[f] for f in fields if f in record}, record.get("label"), None


# --- BoolQ -------------------------------------------------------------------------------
def _boolq(f: Mapping[str, Any]) -> str:
    question = f["question"].strip()
    question = question[:1].upper() + question[1:] + ("" if question.endswith("?") else "?")
    return _qa(f["passage"], question, ask="Is the answer to the question Yes or No?")


BOOLQ = Task(
    name="boolq",
    labels=BOOL_LABELS,
    label_words=YES_NO,
    fields=("passage", "question"),
    required=("passage", "question"),
    template=_boolq,
    splits={"train": "superglue/BoolQ/train_from_val.jsonl", "val": "superglue/BoolQ/eval_from_val.jsonl",
            "test": "superglue/BoolQ/test.jsonl"},
    rows=lambda r: _single(r, ("passage", "question")),
    raw_labels=BOOL_RAW,
)


# --- CB and RTE: premise / hypothesis ----------------------------------------------------
def _entailment(ask: str):
    def template(f: Mapping[str, Any]) -> str:
        return _qa(f["premise"], f"Is the hypothesis entailed by the premise? Hypothesis: {f['hypothesis'].strip()}",
                   ask=ask)
    return template


CB = Task(
    name="cb",
    labels=("entailment", "contradiction", "neutral"),
    label_words=("Yes", "No", "Maybe"),
    fields=("premise", "hypothesis"),
    required=("premise", "hypothesis"),
    template=_entailment("Answer Yes, No or Maybe."),
    metric="accuracy_f1",
    splits={"train": "superglue/CB/train.jsonl", "val": "superglue/CB/val.jsonl", "test": "superglue/CB/test.jsonl"},
    rows=lambda r: _single(r, ("premise", "hypothesis")),
)

RTE = Task(
    name="rte",
    labels=("entailment", "not_entailment"),
    label_words=("Yes", "No"),
    fields=("premise", "hypothesis"),
    required=("premise", "hypothesis"),
    template=_entailment("Answer Yes or No."),
    splits={"train": "superglue/RTE/train.jsonl", "val": "superglue/RTE/val.jsonl", "test": "superglue/RTE/test.jsonl"},
    rows=lambda r: _single(r, ("premise", "hypothesis")),
)


# --- COPA --------------------------------------------------------------------------------
def _copa(f: Mapping[str, Any]) -> str:
    relation = f["question"].strip().lower()
    if relation not in {"cause", "effect"}:
        raise TaskError(f"task 'copa': field 'question' must be 'cause' or 'effect', got {f['question']!r}")
    question = "What was the cause?" if relation == "cause" else "What happened as a result?"
    options = f"Option 1: {f['choice1'].strip()}\nOption 2: {f['choice2'].strip()}"
    return _qa(f["premise"], f"{question}\n{options}", ask="Which option is more plausible, 1 or 2?")


COPA = Task(
    name="copa",
    labels=("choice1", "choice2"),
    label_words=("1", "2"),
    fields=("premise", "choice1", "choice2", "question"),
    required=("premise", "choice1", "choice2", "question"),
    template=_copa,
    splits={"train": "superglue/COPA/train.jsonl", "val": "superglue/COPA/val.jsonl", "test": "superglue/COPA/test.jsonl"},
    rows=lambda r: _single(r, ("premise", "choice1", "choice2", "question")),
    raw_labels={0: "choice1", 1: "choice2"},
)


# --- MultiRC: one example per candidate answer -------------------------------------------
_TAGS = re.compile(r"<br\s*/?>|</?b>", re.IGNORECASE)


def _clean_passage(text: str) -> str:
    """MultiRC passages carry `<b>Sent 1: </b>...<br>` markup; keep one sentence per line."""
    text = re.sub(r"<br\s*/?>", "\n", text, flags=re.IGNORECASE)
    text = re.sub(r"<b>Sent \d+: </b>", "", text)
    return _TAGS.sub("", text).strip()


def _multirc(f: Mapping[str, Any]) -> str:
    return _qa(_clean_passage(f["paragraph"]), f["question"], f["answer"], ask="Is the answer correct Yes or No?")


def _multirc_rows(record: Mapping[str, Any]) -> RecordRows:
    passage = record["passage"]
    for q in passage["questions"]:
        group = f"{record['idx']}/{q['idx']}"
        for a in q["answers"]:
            fields = {"paragraph": passage["text"], "question": q["question"], "answer": a["text"]}
            yield f"{group}/{a['idx']}", fields, a.get("label"), group


MULTIRC = Task(
    name="multirc",
    labels=BOOL_LABELS,
    label_words=YES_NO,
    fields=("paragraph", "question", "answer"),
    required=("paragraph", "question", "answer"),
    template=_multirc,
    metric="multirc",
    splits={"train": "superglue/MultiRC/train.jsonl", "val": "superglue/MultiRC/val.jsonl",
            "test": "superglue/MultiRC/test.jsonl"},
    rows=_multirc_rows,
    raw_labels=BOOL_RAW,
)


# --- WiC: the target word is marked with asterisks ---------------------------------------
def _mark(sentence: str, word: str, start: int | None, end: int | None) -> str:
    if start is None or end is None or not (0 <= start < end <= len(sentence)):
        # Service callers may omit offsets: mark the first case-insensitive match instead.
        match = re.search(re.escape(word), sentence, flags=re.IGNORECASE)
        if match is None:
            return sentence
        start, end = match.span()
    return f"{sentence[:start]}*{sentence[start:end]}*{sentence[end:]}"


def _wic(f: Mapping[str, Any]) -> str:
    s1 = _mark(f["sentence1"], f["word"], f.get("start1"), f.get("end1"))
    s2 = _mark(f["sentence2"], f["word"], f.get("start2"), f.get("end2"))
    return _qa(f"Sentence 1: {s1.strip()}\nSentence 2: {s2.strip()}",
               f"Does the word \"{f['word']}\" have the same meaning in both sentences?",
               ask="Answer Yes or No.")


WIC = Task(
    name="wic",
    labels=BOOL_LABELS,
    label_words=YES_NO,
    fields=("word", "sentence1", "sentence2", "start1", "end1", "start2", "end2"),
    required=("word", "sentence1", "sentence2"),
    field_types={"start1": "int", "end1": "int", "start2": "int", "end2": "int"},
    template=_wic,
    splits={"train": "superglue/WiC/train.jsonl", "val": "superglue/WiC/val.jsonl", "test": "superglue/WiC/test.jsonl"},
    rows=lambda r: _single(r, ("word", "sentence1", "sentence2", "start1", "end1", "start2", "end2")),
    raw_labels=BOOL_RAW,
)


# --- WSC: the pronoun (span2) is marked, the candidate (span1) is named ------------------
def _wsc(f: Mapping[str, Any]) -> str:
    words = f["text"].split(" ")
    index = f.get("span2_index")
    pronoun = f["span2_text"]
    if isinstance(index, int) and 0 <= index < len(words):
        n = len(pronoun.split(" "))
        words[index] = "*" + words[index]
        words[min(index + n, len(words)) - 1] += "*"
    text = " ".join(words)
    return _qa(text, f"Does the pronoun \"{pronoun}\" refer to \"{f['span1_text']}\"?", ask="Answer Yes or No.")


def _wsc_rows(record: Mapping[str, Any]) -> RecordRows:
    t = record["target"]
    fields = {"text": record["text"], "span1_text": t["span1_text"], "span2_text": t["span2_text"],
              "span1_index": t.get("span1_index"), "span2_index": t.get("span2_index")}
    yield str(record["idx"]), fields, record.get("label"), None


WSC = Task(
    name="wsc",
    labels=BOOL_LABELS,
    label_words=YES_NO,
    fields=("text", "span1_text", "span2_text", "span1_index", "span2_index"),
    required=("text", "span1_text", "span2_text"),
    field_types={"span1_index": "int", "span2_index": "int"},
    template=_wsc,
    splits={"train": "superglue/WSC/train.jsonl", "val": "superglue/WSC/val.jsonl", "test": "superglue/WSC/test.jsonl"},
    rows=_wsc_rows,
    raw_labels=BOOL_RAW,
)

SUPERGLUE = {t.name: t for t in (BOOLQ, CB, COPA, MULTIRC, RTE, WIC, WSC)}
