"""Reading task data, turning examples into token features, and collating them into padded batches."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from contract.encoding import encode_input
from contract.model import pad_batch
from contract.text import answer_text, reason_text
from contract.tasks import Example, Task, TaskError

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """`$DHRD_DATA_DIR`, else the shared data folder beside the repository (`../shared/data`)."""
    env = os.environ.get("DHRD_DATA_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data")


def split_source(task: Task, split: str, data_dir: Path | None = None) -> tuple[Path, str | None]:
    """The file behind a split, and the part of it (`file#val`) for files we split ourselves."""
    if split not in task.splits:
        raise TaskError(f"task {task.name!r} has no split {split!r}; it has {sorted(task.splits)}")
    name, _, part = task.splits[split].partition("#")
    path = Path(name)
    return (path if path.is_absolute() else (data_dir or default_data_dir()) / path), part or None


def split_path(task: Task, split: str, data_dir: Path | None = None) -> Path:
    return split_source(task, split, data_dir)[0]


def holdout_part(text: str, fraction: float = 0.1) -> str:
    """Stable train/val assignment of a record by the sha256 of its input text."""
    return "val" if int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction else "train"


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, line) for the non-blank lines of a data file."""
    if not path.exists():
        raise TaskError(f"data file {path} does not exist (set --data-dir or DHRD_DATA_DIR)")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line


def read_flan_tsv(path: Path) -> Iterable[tuple[int, dict]]:
    """FLAN v2 CoT files: `input<TAB>answer<TAB>rationale`, newlines escaped as a literal backslash-n."""
    for lineno, line in _lines(path):
        cols = line.rstrip("\n").split("\t")
        if len(cols) != 3:
            raise TaskError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(cols)}")
        text, answer, rationale = (c.replace("\\n", "\n").strip() for c in cols)
        yield lineno, {"input": text, "answer": answer, "rationale": rationale}


def read_records(path: Path, part: str | None = None, end: int | None = None) -> Iterable[tuple[int, dict]]:
    """(line number, record) pairs of a split's file; with `end`, lines from row `end` on are never parsed."""
    records = read_flan_tsv(path) if path.suffix == ".tsv" else read_jsonl(path, end)
    return ((n, r) for n, r in records if part is None or holdout_part(r.get("input", json.dumps(r))) == part)


def read_jsonl(path: Path, end: int | None = None) -> Iterable[tuple[int, dict]]:
    """(line number, record) pairs; a bad line raises TaskError naming file and line. Rows (0-based line
    numbers) from `end` on are not parsed."""
    for lineno, line in _lines(path):
        if end is not None and lineno - 1 >= end:
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise TaskError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def load_examples(task: Task, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
    """All examples of one split; labels are checked against the task's label set."""
    path, part = split_source(task, split, data_dir)
    start, end = task.split_rows.get(split, (0, None))
    examples: list[Example] = []
    for lineno, record in read_records(path, part, end):
        if end is not None and lineno - 1 >= end:
            break  # rows past the split's range are never read (e-SNLI's reserved rows among them)
        if lineno - 1 < start:
            continue
        record.setdefault("idx", lineno - 1)
        try:
            for key, fields, raw_label, group in task.rows(record):
                label = None if raw_label is None else task.label_index(raw_label)
                task.format(fields)  # fail here, with the line number, not mid-training
                examples.append(Example(f"{task.name}/{key}", fields, label, group and f"{task.name}/{group}"))
        except (TaskError, KeyError, TypeError, AttributeError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise TaskError(f"{path}:{lineno}: {detail}") from exc
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise TaskError(f"{path}: no examples")
    return examples[:limit] if limit else examples


@dataclass
class Features:
    """Token features of one training example.

    `input_len` tokens of classifier input, then (for α > 0) the suffix tokens; the pooled
    feature is read at `input_len - 1` (the last input token, §3).
    """

    input_ids: list[int]
    input_len: int
    label: int
    lm_start: int  # first token that counts in the LM loss (0 = whole sequence, as in the paper)
    truncated: bool = False


def build_features(task: Task, example: Example, tokenizer, max_length: int, rationale: str | None = None,
                   with_suffix: bool = False, lm_span: str = "suffix", max_rationale_tokens: int = 256) -> Features:
    """Tokenise one example: input alone, plus `Reasoning: r / Final Answer: y <eos>` when `with_suffix`.

    Args:
        lm_span: "suffix" (rationale + answer only; TrainConfig's default too) or "all" (paper, Eq. 3:
            input + rationale + answer).
    """
    if example.label is None:
        raise TaskError(f"{example.key}: has no label; unlabelled splits cannot be trained on")
    ids, truncated = encode_input(tokenizer, task.format(example.fields), max_length)
    input_len = len(ids)
    if with_suffix:
        word = task.label_words[example.label]
        # Tokenised piecewise so a long rationale is cut without ever losing the answer.
        reason = reason_text(rationale)
        reason_ids = tokenizer(reason, add_special_tokens=False)["input_ids"][:max_rationale_tokens] if reason else []
        answer_ids = tokenizer(answer_text(word), add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = ids + reason_ids + answer_ids + eos
    lm_start = 0 if lm_span == "all" else input_len
    return Features(ids, input_len, example.label, lm_start, truncated)


def collate(batch: Sequence[Features], pad_id: int, side: str = "right", with_lm: bool = False) -> dict[str, torch.Tensor]:
    """Pad features into tensors: `input_ids`, `attention_mask`, `pool_index`, `cls_labels` (+ `lm_labels`).

    `lm_labels` are the input ids with -100 on padding and on tokens before `lm_start`
    (the model shifts them by one internally).
    """
    input_ids, attention_mask = pad_batch([f.input_ids for f in batch], pad_id, side)
    T = input_ids.shape[1]
    offsets = [0 if side == "right" else T - len(f.input_ids) for f in batch]
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pool_index": torch.tensor([o + f.input_len - 1 for o, f in zip(offsets, batch)], dtype=torch.long),
        "cls_labels": torch.tensor([f.label for f in batch], dtype=torch.long),
    }
    if with_lm:
        lm_labels = input_ids.clone()
        lm_labels[attention_mask == 0] = -100
        for i, (o, f) in enumerate(zip(offsets, batch)):
            lm_labels[i, : o + f.lm_start] = -100
        out["lm_labels"] = lm_labels
    return out
