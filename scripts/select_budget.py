#!/usr/bin/env python3
"""Epochs and learning rate chosen on a held-out slice of train, never on the reported split.

For each (arm, learning rate, seed): one `dhrd train --holdout FRACTION` run of the largest epoch budget;
the end of every epoch scores the slice of train the run never trained on, so one run gives the
held-out curve over epochs. One JSON row per finished run; a table of the curves and the best
(learning rate, epochs) per arm.

    .venv/bin/python scripts/select_budget.py --track esnli --arms a0,a1-suffix --lrs 3e-5 --epochs 3
    .venv/bin/python scripts/select_budget.py --report-only

Approximation, stated in the report: epoch k of a K-epoch run is not a k-epoch run (the cosine schedule
decays over K epochs), the usual way epochs are chosen from one curve. Resumable like the study.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # repo + study
from study.runs import (REPO, append_row, commit, dhrd_train, read_rows, relative, row_machine,  # noqa: E402
                        training_seconds)
from study.tracks import ARMS, TRACKS  # noqa: E402

DEFAULT_ROWS = REPO / "reports" / "accuracy" / "selection.jsonl"
HOLDOUT = 0.1  # of the track's train file: e-SNLI ~980 examples, CREAK ~1,000
EVAL_LIMIT = 500  # of them, scored at every epoch end (~30 s on the CPU)


def selection_flags(arm: str) -> list[str]:
    """An accuracy-study arm's loss flags; its epoch budget is the selection's to choose."""
    flags = ARMS[arm]
    if any(f.startswith("--epochs") or f in ("--shuffled-rationales", "--alt-rationales") for f in flags):
        raise SystemExit(f"arm {arm!r} fixes epochs or rationales; select with a plain arm (a0, a1-suffix, a1, a0.3)")
    return list(flags)


def train_command(track: str, arm: str, lr: str, seed: int, epochs: int, run: Path) -> list[str]:
    return dhrd_train(TRACKS[track], run, seed, epochs, "--holdout", str(HOLDOUT), "--eval-limit", str(EVAL_LIMIT),
                      "--lr", lr, *selection_flags(arm))


def run_one(track: str, arm: str, lr: str, seed: int, epochs: int, runs: Path, rows_path: Path) -> dict:
    run = runs / track / f"{arm}-lr{lr}-e{epochs}-s{seed}"
    cmd = train_command(track, arm, lr, seed, epochs, run)
    started = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    summary = json.loads((run / "summary.json").read_text())
    row = {"track": track, "arm": arm, "lr": lr, "seed": seed, "epochs": epochs, "holdout": HOLDOUT,
           "train_examples": summary["data"]["train_examples"], "val_examples": summary["data"]["val_examples"],
           "curve": [{"epoch": h["epoch"] + 1, "step": h["step"], **h["val"]} for h in summary["history"]],
           "steps": summary["steps"], "train_tokens": summary["tokens"],
           "train_wall_s": training_seconds(run, time.time() - started),
           "train_command": shlex.join(relative(cmd)), "machine": row_machine(), "commit": commit(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    append_row(rows_path, row)
    (run / "checkpoints" / "last.pt").unlink(missing_ok=True)  # ~1.4 GB each; the row holds the curve
    return row


def report(rows: list[dict]) -> str:
    """Per track: each run's held-out score after every epoch, and per arm the best (lr, epochs)."""
    lines = ["# Epochs and learning rate chosen on a held-out slice of train", "",
             "Written by `scripts/select_budget.py`. Each run trains on the track's train subset minus a fixed",
             f"{HOLDOUT:.0%} hash slice of the train file and scores up to {EVAL_LIMIT} examples of that slice at every",
             "epoch end; the reported evaluation split is never read. Epoch k of a K-epoch run decays its",
             "learning rate over K epochs, not k: the usual approximation when one curve picks the epochs.", ""]
    for track in dict.fromkeys(r["track"] for r in rows):
        mine = [r for r in rows if r["track"] == track]
        width = max(r["epochs"] for r in mine)
        m = mine[0]["machine"]
        lines += [f"## {track} (train {mine[0]['train_examples']} examples, held-out {mine[0]['val_examples']}; "
                  f"{m.get('cpu', '?')}, {m.get('device', '?')})", "",
                  "| arm | lr | seed | " + " | ".join(f"epoch {k}" for k in range(1, width + 1))
                  + " | train s | commit | date |",
                  "|---|---|---|" + "---|" * width + "---|---|---|"]
        for r in mine:
            scores = [f"{c['score']:.3f}" for c in r["curve"]] + ["—"] * (width - len(r["curve"]))
            lines.append(f"| {r['arm']} | {r['lr']} | {r['seed']} | " + " | ".join(scores)
                         + f" | {r['train_wall_s']:.0f} | {r['commit']} | {r['date']} |")
        lines.append("")
        for arm in dict.fromkeys(r["arm"] for r in mine):
            lr, epoch, score = best(r for r in mine if r["arm"] == arm)
            lines.append(f"- **{arm}**: best held-out score {score:.3f} at lr {lr}, {epoch} epoch(s) "
                         "(mean over seeds where several ran)")
        lines.append("")
    return "\n".join(lines)


def best(rows) -> tuple[str, int, float]:
    """(lr, epochs, score) with the highest held-out score averaged over the seeds of each (lr, epoch)."""
    by_point: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        for c in r["curve"]:
            by_point.setdefault((r["lr"], c["epoch"]), []).append(c["score"])
    (lr, epoch), scores = max(by_point.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
    return lr, epoch, sum(scores) / len(scores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--track", default="esnli", choices=sorted(TRACKS))
    parser.add_argument("--arms", default="a0,a1-suffix")
    parser.add_argument("--lrs", default="3e-5", help="backbone peak learning rates, comma-separated")
    parser.add_argument("--epochs", type=int, default=3, help="the largest budget; every epoch end is scored")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rows", type=Path, default=DEFAULT_ROWS)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "select")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        done = {(r["track"], r["arm"], r["lr"], r["seed"], r["epochs"]) for r in read_rows(args.rows)}
        for seed in map(int, args.seeds.split(",")):
            for lr in args.lrs.split(","):
                for arm in args.arms.split(","):
                    if (args.track, arm, lr, seed, args.epochs) in done:
                        continue
                    print(f"[select] {args.track} {arm} lr {lr} seed {seed}, {args.epochs} epochs", flush=True)
                    row = run_one(args.track, arm, lr, seed, args.epochs, args.runs, args.rows)
                    print(f"[select] held-out scores by epoch: {[round(c['score'], 4) for c in row['curve']]}",
                          flush=True)
    out = args.rows.with_name("selection.md")
    out.write_text(report(read_rows(args.rows)) + "\n")
    print(f"[select] report: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
