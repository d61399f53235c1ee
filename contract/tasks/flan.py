"""Extra tasks from the FLAN v2 CoT submix (human-written rationales): CREAK, StrategyQA,
Sen-Making, QASC and ECQA. Each file is both the data and its rationales; only a train file
exists, so it is split 90/10 by a hash of the input (`file#train` / `file#val`, see data.holdout_part).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from .base import RecordRows, Task

FLAN = "rationales/flan_cot"
OPTION = re.compile(r"^- (?:\(([A-H])\) )?(.+)$", re.MULTILINE)


def _rows(record: Mapping[str, Any]) -> RecordRows:
    yield str(record["idx"]), {"input": record["input"]}, record.get("answer"), None


def _flan(name: str, labels: tuple[str, ...], words: tuple[str, ...], ask: str, raw=None, rows=_rows) -> Task:
    return Task(
        name=name, labels=labels, label_words=words, fields=("input",), required=("input",),
        template=lambda f: f"{f['input'].strip()}\n{ask}".strip(),
        splits={"train": f"{FLAN}/{name}_train.tsv#train", "val": f"{FLAN}/{name}_train.tsv#val"},
        rows=rows, raw_labels=raw or {},
    )


def _ecqa_rows(record: Mapping[str, Any]) -> RecordRows:
    """ECQA answers are option texts: the label is the option's position (a-e)."""
    options = [m.group(2).strip() for m in OPTION.finditer(record["input"])]
    answer = record.get("answer")
    label = "abcde"[options.index(answer)] if answer in options and len(options) == 5 else f"not an option: {answer}"
    yield str(record["idx"]), {"input": record["input"]}, label if answer is not None else None, None


CREAK = _flan("creak", ("no", "yes"), ("no", "yes"), "Answer yes or no.")
STRATEGYQA = _flan("strategyqa", ("no", "yes"), ("no", "yes"), "Answer yes or no.")
SENSEMAKING = _flan("sensemaking", ("Sentence A", "Sentence B"), ("A", "B"), "Answer A or B.")
QASC = _flan("qasc", tuple(f"({c})" for c in "ABCDEFGH"), tuple("ABCDEFGH"), "Answer with the option letter.")
ECQA = _flan("ecqa", tuple("abcde"), tuple("abcde"), "Answer with the option's position, a to e.", rows=_ecqa_rows)

FLAN_TASKS = {t.name: t for t in (CREAK, STRATEGYQA, SENSEMAKING, QASC, ECQA)}
