"""Import existing human rationales into the rationale JSONL format.

- COPA-SSE (Brassard et al. 2022): crowd-sourced explanations for every COPA question; we take the
  explanation with the best filtered average rating.
- WinoWhy (Zhang et al. 2020): human reasons for WSC273 questions; we take the best-scored
  "Valid" human reason, for WSC examples whose sentence matches and whose label agrees.

Rows are checked against the task's gold labels; unmatched examples are counted, not guessed, so
a generating teacher can fill them afterwards (`dhrd rationales` skips keys already written).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

from .tasks import Example, Task, TaskError

IMPORTERS = ("copa_sse", "winowhy")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _row(task: Task, split: str, example: Example, text: str, teacher: str, params: dict) -> dict[str, Any]:
    return {"key": example.key, "task": task.name, "split": split, "label": task.labels[example.label],
            "rationale": re.sub(r"\s+", " ", text).strip(), "teacher": teacher, "prompt_version": "human",
            "params": params, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def copa_sse(task: Task, split: str, examples: Sequence[Example], data_dir: Path) -> tuple[list[dict], dict]:
    if task.name != "copa":
        raise TaskError(f"import:copa_sse is for task 'copa', not {task.name!r}")
    path = data_dir / "rationales" / "copa_sse" / "dev-explained.jsonl"
    if not path.exists():
        raise TaskError(f"{path} does not exist")
    # keyed both ways round: COPA-SSE (Balanced COPA) may list the alternatives in the other order
    index: dict[tuple, tuple[dict, int]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        answer = int(r["most-plausible-alternative"]) - 1  # 0 = a1
        index.setdefault((_norm(r["p"]), _norm(r["a1"]), _norm(r["a2"]), r["asks-for"]), (r, answer))
        index.setdefault((_norm(r["p"]), _norm(r["a2"]), _norm(r["a1"]), r["asks-for"]), (r, 1 - answer))
    rows, stats = [], {"matched": 0, "unmatched": 0, "label_disagrees": 0}
    params = {"source": "rationales/copa_sse/dev-explained.jsonl", "selection": "highest filtered-avg-rating"}
    for e in examples:
        f = e.fields
        found = index.get((_norm(f["premise"]), _norm(f["choice1"]), _norm(f["choice2"]), f["question"]))
        if found is None:
            stats["unmatched"] += 1
            continue
        hit, answer = found
        if answer != e.label:
            stats["label_disagrees"] += 1
            continue
        best = max(hit["human-explanations"], key=lambda x: (x.get("filtered-avg-rating") or 0, len(x["text"])))
        rows.append(_row(task, split, e, best["text"], "import:copa_sse-human", params))
        stats["matched"] += 1
    return rows, stats


def winowhy(task: Task, split: str, examples: Sequence[Example], data_dir: Path) -> tuple[list[dict], dict]:
    if task.name != "wsc":
        raise TaskError(f"import:winowhy is for task 'wsc', not {task.name!r}")
    path = data_dir / "rationales" / "winowhy" / "winowhy.json"
    if not path.exists():
        raise TaskError(f"{path} does not exist")
    index: dict[str, list[dict]] = {}
    for q in json.loads(path.read_text()):
        t = q["text"]
        index.setdefault(_norm(f"{t['txt1']} {t['pron']} {t['txt2']}"), []).append(q)
    rows, stats = [], {"matched": 0, "unmatched": 0, "label_disagrees": 0, "no_valid_reason": 0}
    params = {"source": "rationales/winowhy/winowhy.json", "selection": "best-scored Valid human reason"}
    for e in examples:
        candidates = index.get(_norm(e.fields["text"]), [])
        chosen = None
        for q in candidates:
            answers = [_norm(a) for a in q["answers"]]
            correct = answers["AB".index(q["correctAnswer"].strip()[0])]
            span1 = _norm(e.fields["span1_text"])
            if span1 not in answers and not any(span1 in a or a in span1 for a in answers):
                continue
            refers = span1 == correct or span1 in correct or correct in span1
            chosen = (q, refers)
            break
        if chosen is None:
            stats["unmatched"] += 1
            continue
        q, refers = chosen
        if task.labels.index("True" if refers else "False") != e.label:
            stats["label_disagrees"] += 1
            continue
        valid = [r for r in q["reasons"] if r[1] == "human" and r[3] == "Valid"]
        if not valid:
            stats["no_valid_reason"] += 1
            continue
        text = max(valid, key=lambda r: (r[2], len(r[0])))[0]
        rows.append(_row(task, split, e, text, "import:winowhy-human", params))
        stats["matched"] += 1
    return rows, stats


def import_rationales(name: str, task: Task, split: str, examples: Sequence[Example], data_dir: Path,
                      out: Path) -> dict[str, Any]:
    """Append imported rows for keys not yet in `out`; returns (and writes next to it) a summary."""
    from .rationales import done_keys, summarise

    importer = {"copa_sse": copa_sse, "winowhy": winowhy}.get(name)
    if importer is None:
        raise TaskError(f"unknown importer {name!r}; known: {', '.join(IMPORTERS)}")
    started = time.time()
    rows, stats = importer(task, split, examples, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    new = [r for r in rows if r["key"] not in done]
    with open(out, "a", encoding="utf-8") as fh:
        for r in new:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    stats.update(written=len(new), skipped_done=len(rows) - len(new), wall_seconds=round(time.time() - started, 1))
    summary = summarise(out, stats)
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
