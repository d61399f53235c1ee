"""Importing existing rationales (human, or another model's) into the rationale file format."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Sequence

from contract.tasks import Example, Task, TaskError

from .rows import done_keys, write_summary


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _row(task: Task, split: str, example: Example, text: str, teacher: str, params: dict,
         prompt_version: str = "human") -> dict[str, Any]:
    return {"key": example.key, "task": task.name, "split": split, "label": task.labels[example.label],
            "rationale": re.sub(r"\s+", " ", text).strip(), "teacher": teacher, "prompt_version": prompt_version,
            "params": params, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _source(name: str, task: Task, wanted: str, data_dir: Path, relative: str) -> Path:
    """The shared-data file an importer reads, after checking it is used for its task."""
    if task.name != wanted:
        raise TaskError(f"import:{name} is for task {wanted!r}, not {task.name!r}")
    path = data_dir / relative
    if not path.exists():
        raise TaskError(f"{path} does not exist")
    return path


def copa_sse(task: Task, split: str, examples: Sequence[Example], data_dir: Path) -> tuple[list[dict], dict]:
    """COPA-SSE (Brassard et al. 2022): crowd-sourced explanations for every COPA question; the one with
    the best filtered average rating."""
    path = _source("copa_sse", task, "copa", data_dir, "rationales/copa_sse/dev-explained.jsonl")
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
    """WinoWhy (Zhang et al. 2020): human reasons for WSC273 questions; the best-scored "Valid" human
    reason, for WSC examples whose sentence matches and whose label agrees."""
    path = _source("winowhy", task, "wsc", data_dir, "rationales/winowhy/winowhy.json")
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


_PALM_ANSWER = re.compile(r"(?:So the answer is|\nAnswer:)\s*(?:\(([a-e])\))?\s*([^\n]*?)\.?\s*$", re.IGNORECASE)


def parse_palm(completion: str) -> tuple[str, str] | None:
    """(rationale, answer) from one PaLM few-shot completion; None when it has no answer line.

    A completion runs on into the next few-shot example after a blank line; only the first block
    counts. The answer is the option letter when given ("(c) train station"), else the words."""
    block = completion.split("\n\n")[0].strip()
    match = _PALM_ANSWER.search(block)
    if not match:
        return None
    rationale = block[: match.start()].strip()
    answer = (match.group(1) or match.group(2)).strip().lower()
    return rationale, answer


def palm_cot(task: Task, split: str, examples: Sequence[Example], data_dir: Path) -> tuple[list[dict], dict]:
    """PaLM-540B CoT outputs of distilling-step-by-step, aligned line by line with the task's input file."""
    if task.name not in ("esnli", "anli1", "cqa"):
        raise TaskError(f"import:palm_cot is for tasks esnli, anli1, cqa, not {task.name!r}")
    source = Path(task.splits[split])
    stem = source.stem.split("_", 1)[1]  # esnli_valid -> valid
    parts = sorted((data_dir / source.parent / "llm").glob(f"{stem}_CoT_*.json"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if not parts:
        raise TaskError(f"no PaLM outputs {stem}_CoT_*.json next to {data_dir / source}")
    completions = [c for p in parts for c in json.loads(p.read_text())]
    if len(completions) != len(examples):
        raise TaskError(f"{len(completions)} PaLM outputs for {len(examples)} examples of {task.name}/{split}: "
                        "the files are not aligned (use the whole split, no --limit/--sample)")
    rows, stats = [], {"matched": 0, "no_answer": 0, "label_disagrees": 0, "empty": 0}
    params = {"source": f"{source.parent}/llm/{stem}_CoT_*.json", "teacher_model": "PaLM-540B few-shot CoT"}
    words = [w.lower() for w in task.labels]
    for e, completion in zip(examples, completions):
        parsed = parse_palm(completion)
        if parsed is None:
            stats["no_answer"] += 1
            continue
        rationale, answer = parsed
        if answer not in words or words.index(answer) != e.label:
            stats["label_disagrees"] += 1
            continue
        if len(rationale.split()) < 3:
            stats["empty"] += 1
            continue
        rows.append(_row(task, split, e, rationale, "import:palm-540b-cot", params, "dss-fewshot-cot"))
        stats["matched"] += 1
    stats["agreement_rate"] = round(stats["matched"] / max(1, len(examples) - stats["no_answer"]), 4)
    return rows, stats


def flan(task: Task, split: str, examples: Sequence[Example], data_dir: Path) -> tuple[list[dict], dict]:
    """The human rationale column of a FLAN v2 CoT file, for the FLAN extra tasks."""
    from ..data import read_records, split_source
    from contract.tasks.flan import FLAN_TASKS

    if task.name not in FLAN_TASKS:
        raise TaskError(f"import:flan is for tasks {', '.join(FLAN_TASKS)}, not {task.name!r}")
    path, part = split_source(task, split, data_dir)
    texts = {f"{task.name}/{lineno - 1}": r["rationale"] for lineno, r in read_records(path, part)}
    rows, stats = [], {"matched": 0, "empty": 0}
    params = {"source": f"rationales/flan_cot/{path.name}", "selection": "the file's rationale column"}
    for e in examples:
        text = texts.get(e.key, "")
        if len(text.split()) < 3:
            stats["empty"] += 1
            continue
        rows.append(_row(task, split, e, text, "import:flan-v2-human", params))
        stats["matched"] += 1
    return rows, stats


# `dhrd rationales --teacher import:NAME`
IMPORTERS = {"copa_sse": copa_sse, "winowhy": winowhy, "palm_cot": palm_cot, "flan": flan}


def import_rationales(name: str, task: Task, split: str, examples: Sequence[Example], data_dir: Path,
                      out: Path) -> dict[str, Any]:
    """Append imported rows for keys not yet in `out`; returns (and writes next to it) a summary.

    Rows are checked against the task's gold labels; unmatched examples are counted, not guessed,
    so a generating teacher can fill them afterwards (`dhrd rationales` skips keys already written).

    Raises:
        TaskError: an unknown importer, one used for the wrong task, or its source file missing.
    """
    importer = IMPORTERS.get(name)
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
    stats.update(run_id=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), teacher=f"import:{name}",
                 written=len(new), skipped_done=len(rows) - len(new), wall_seconds=round(time.time() - started, 1))
    return write_summary(out, stats)
