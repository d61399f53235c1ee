"""Reading a task's splits: its data files (JSONL, FLAN TSV), the held-out part of files we split
ourselves (`file#val`), and the labelled `Example`s. Pure Python (no torch): training, the load tool
and scripts read splits the same way."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from .tasks import Example, Task, TaskError

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
    ns = f"{task.name}/{task.key_prefixes.get(split, '')}"  # keys say which file they name (Task.key_prefixes)
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
                examples.append(Example(f"{ns}{key}", fields, label, group and f"{ns}{group}"))
        except (TaskError, KeyError, TypeError, AttributeError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise TaskError(f"{path}:{lineno}: {detail}") from exc
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise TaskError(f"{path}: no examples")
    return examples[:limit] if limit else examples
