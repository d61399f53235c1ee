"""The rationale file: its row format, reading it, joining it with a split's examples, and its summary."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from contract.tasks import Example, Task, TaskError

# A rationale file is `.jsonl` or `.jsonl.gz`, one JSON object per example, with the fields
#   key, task, split, label (native label name), rationale, teacher, prompt_version, params, created
# of which training needs the first three below; the rest say where a row came from.
REQUIRED_FIELDS = ("key", "label", "rationale")


def open_text(path: Path, mode: str = "rt") -> IO[str]:
    """A text handle on `path`, gunzipping `.gz` files."""
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs of a rationale file (.jsonl or .jsonl.gz); bad lines name file and line.

    A truncated last line (a write cut by a kill) is skipped, since resume rewrites it.

    Raises:
        TaskError: the file is missing, a line is not JSON, or a row lacks key, label or rationale.
    """
    path = Path(path)
    if not path.exists():
        raise TaskError(f"rationale file {path} does not exist")
    with open_text(path) as fh:
        lines = fh.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                return  # torn final write
            raise TaskError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        for key in REQUIRED_FIELDS:
            if key not in row:
                raise TaskError(f"{path}:{lineno}: missing field {key!r}")
        yield lineno, row


def done_keys(path: Path) -> set[str]:
    """Keys already in a rationale file (empty when it does not exist yet): what a resumed run skips."""
    return {row["key"] for _, row in read_rows(path)} if Path(path).exists() else set()


def load_rationales(path: Path, task: Task, examples: Sequence[Example], skip_missing: bool = False,
                    split_examples: Sequence[Example] | None = None) -> dict[str, str]:
    """Rationale text by example key, joined on `key` and checked against the examples.

    Args:
        examples: the examples being trained on.
        split_examples: the whole split, when `examples` is a subset (rows for the rest are ignored).
    Raises:
        TaskError: a key that is not in the split, a label that disagrees with the gold label, a
            duplicate key, or (unless `skip_missing`) a trained example with no rationale.
    """
    gold = {e.key: task.labels[e.label] for e in (split_examples or examples) if e.label is not None}
    wanted = {e.key for e in examples}
    found: dict[str, str] = {}
    for lineno, row in read_rows(path):
        key = row["key"]
        if key not in gold:
            raise TaskError(f"{path}:{lineno}: key {key!r} is not an example of task {task.name!r} "
                            f"(wrong task or split?)")
        if str(row["label"]) != gold[key]:
            raise TaskError(f"{path}:{lineno}: label {row['label']!r} disagrees with gold {gold[key]!r} for {key}")
        if key in found:
            raise TaskError(f"{path}:{lineno}: duplicate key {key!r}")
        found[key] = row["rationale"]
    found = {k: v for k, v in found.items() if k in wanted}
    missing = [e.key for e in examples if e.key not in found]
    if missing and not skip_missing:
        raise TaskError(f"{path}: no rationale for {len(missing)} of {len(wanted)} examples "
                        f"(first: {missing[:3]}); pass --skip-missing-rationales to train without them")
    return found


def default_rationale_file(task: Task, split: str = "train") -> Path | None:
    """The committed set `data/rationales/<task>.<split>.jsonl[.gz]`, if there is one."""
    from ..data import REPO_ROOT

    for suffix in (".jsonl", ".jsonl.gz"):
        path = REPO_ROOT / "data" / "rationales" / f"{task.name}.{split}{suffix}"
        if path.exists():
            return path
    return None


def write_summary(path: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Describe a rationale file in `<file>.summary.json`: row count, length percentiles, teachers,
    and the history of the runs that wrote it (a run that wrote nothing leaves no entry).

    Args:
        stats: what this run (a generation or an import) did; must carry `run_id` and `written`.
    Returns:
        The summary, plus `this_run`: `stats`.
    """
    summary_path = Path(str(path) + ".summary.json")
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    runs = previous.get("runs", [])
    if runs and runs[-1].get("run_id") == stats.get("run_id"):
        runs[-1] = stats  # the same run, a batch further on
    elif stats.get("written", 0) > 0 or not runs:
        runs.append(stats)
    rows = [row for _, row in read_rows(path)]
    lengths = sorted(len(r["rationale"].split()) for r in rows)

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0

    summary = {"file": Path(path).name, "rows": len(rows), "words_p10_p50_p90": [pct(0.1), pct(0.5), pct(0.9)],
               "teachers": sorted({r.get("teacher", "?") for r in rows}),
               "prompt_versions": sorted({r.get("prompt_version", "?") for r in rows}), "runs": runs}
    # Atomic: a kill mid-write must not leave a torn summary that the resumed run cannot read.
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)
    return {**summary, "this_run": stats}  # the caller also learns what this very run did
