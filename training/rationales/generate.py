"""Resumable generation: ask a teacher for every example's rationale, judge, retry, append, summarise."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from contract.tasks import Example, Task
from contract.text import parse_answer

from .judge import judge
from .prompts import COT_PROMPT_VERSION, PROMPT_VERSION, Request, cot_prompt, label_prompt
from .rows import done_keys, write_summary
from .teachers import Teacher

MODES = {"label": (label_prompt, PROMPT_VERSION), "cot": (cot_prompt, COT_PROMPT_VERSION)}


def generate(task: Task, split: str, examples: Sequence[Example], teacher: Teacher, out: Path,
             batch_size: int = 8, max_retries: int = 2, progress: bool = True, mode: str = "label") -> dict[str, Any]:
    """Write one row per example to `out` (append-only, flushed per batch); skip keys already there.

    Rejected completions are retried up to `max_retries` times; rows that never pass are
    counted in the summary and not written.

    Args:
        mode: "label" (the teacher sees the gold label, as in the paper) or "cot" (it does not; rows
            whose parsed answer disagrees with the gold label are rejected).
    Returns:
        The summary, also written next to `out` (see `rows.write_summary`).
    Raises:
        ValueError: an unknown `mode`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'label' or 'cot', got {mode!r}")
    make_request, version = MODES[mode]
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(out)
    done = done_keys(out)
    todo = [make_request(task, e) for e in examples if e.label is not None and e.key not in done]
    stats = {"run_id": _now(), "teacher": teacher.teacher_id, "params": teacher.params, "mode": mode,
             "batch_size": batch_size, "rejected": {}, "written": 0, "failed": 0, "skipped_done": len(done)}
    first_answers: dict[str, int | None] = {}  # CoT mode: the teacher's first answer, for the agreement rate
    started = time.time()
    bar = tqdm(total=len(todo), unit="row", disable=not progress, desc=f"rationales {task.name}/{split}")
    labels_by_key = {e.key: task.labels[e.label] for e in examples if e.label is not None}
    with open(out, "a", encoding="utf-8") as fh:
        for i in range(0, len(todo), batch_size):
            accepted, failed = _complete_batch(teacher, todo[i:i + batch_size], max_retries, stats["rejected"],
                                               first_answers)
            for req, text in accepted:
                row = {"key": req.key, "task": task.name, "split": split, "label": labels_by_key[req.key],
                       "rationale": text, "teacher": teacher.teacher_id, "prompt_version": version,
                       "params": teacher.params, "created": _now()}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            stats["failed"] += len(failed)
            stats["written"] += len(accepted)
            bar.update(len(accepted) + len(failed))
            # The summary follows the file batch by batch, so an interrupted set still describes itself.
            _write_summary(out, stats, started, first_answers, todo, finished=False)
    bar.close()
    return _write_summary(out, stats, started, first_answers, todo, finished=True)


def _complete_batch(teacher: Teacher, pending: list[Request], max_retries: int, rejected: dict[str, int],
                    first_answers: dict[str, int | None]) -> tuple[list[tuple[Request, str]], list[Request]]:
    """Ask the teacher for one batch, retrying rejected completions.

    Returns:
        (accepted (request, rationale) pairs, requests still rejected after the last attempt).
        Reject reasons are counted into `rejected`; in CoT mode the first attempt's parsed answer
        of each request goes into `first_answers`.
    """
    accepted: list[tuple[Request, str]] = []
    for attempt in range(max_retries + 1):
        if not pending:
            break
        completions = teacher.complete([r.prompt for r in pending], attempt)
        retry = []
        for req, raw in zip(pending, completions):
            if attempt == 0 and req.label_words:
                first_answers[req.key] = parse_answer(raw or "", req.label_words)
            text, reason = judge(req, raw)
            if reason is None:
                accepted.append((req, text))
            else:
                rejected[reason] = rejected.get(reason, 0) + 1
                retry.append(req)
        pending = retry
    return accepted, pending


def _write_summary(out: Path, stats: dict[str, Any], started: float, first_answers: dict[str, int | None],
                   todo: list[Request], finished: bool) -> dict[str, Any]:
    stats["wall_seconds"] = round(time.time() - started, 1)
    stats["run_finished"] = finished  # False while running or after a kill: resume to finish
    if first_answers:
        gold = {r.key: r.gold for r in todo}
        stats["agreement_rate"] = round(sum(a == gold[k] for k, a in first_answers.items()) / len(first_answers), 4)
    return write_summary(out, stats)


def _drop_torn_tail(path: Path) -> None:
    """A kill mid-write can leave a partial last line; cut it so appends start on a clean line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
