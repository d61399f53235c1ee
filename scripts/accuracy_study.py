#!/usr/bin/env python3
"""Does the reasoning head pay? Seeded arms per track, one `dhrd train` + `dhrd evaluate` per
(track, arm, seed), one JSON row appended per finished run, and a report with seeds as the unit of
evidence: per-seed paired differences to the pooled baseline (α = 0), a paired t-interval and exact
tests over seeds, and the bootstrap over examples as a secondary column.

    .venv/bin/python scripts/accuracy_study.py --tracks esnli --arms a0,a1 --seeds 0,1,2
    .venv/bin/python scripts/accuracy_study.py --report-only          # tables from the rows so far
    .venv/bin/python scripts/accuracy_study.py --confirmation --commit  # the confirmation, in its order
                                                  # (scripts/confirmation.sh runs it from a pinned worktree)

Resumable: a finished run (its row in the rows file) is skipped; a killed run resumes from its last
checkpoint (`dhrd train --resume`). Every arm of a track has the same data, order (per seed), steps
and hyper-parameters, fixed in study/tracks.py; the model that is scored is the last one. The code is
the package scripts/study/ (tracks, runs, statistics, report); this file is its command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a script run as `python scripts/...`: the repo's packages (loadtest, contract) and the study package
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
from study.report import plot, report, superglue_table  # noqa: E402
from study.runs import (DEFAULT_ROWS, commit_row, confirmation_plan, done_runs, esnli_rows_scored,  # noqa: E402
                        merge_rows, padding_waste, read_rows, row_device, row_machine, run_one)
from study.tracks import TRACKS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", default="esnli")
    parser.add_argument("--arms", default="a0,a0.3,a1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", type=Path, default=DEFAULT_ROWS)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", type=Path, default=None, metavar="DIR",
                        help="add the runs another machine finished (DIR: the tree scripts/gpu_study.sh returned, "
                             "holding reports/accuracy/), then rebuild the report")
    parser.add_argument("--padding", action="store_true",
                        help="print the padding share of each (track, arm)'s first epoch of batches, train nothing")
    parser.add_argument("--confirmation", action="store_true",
                        help="run the pre-registered confirmation's 20 runs in the amended order (TRAINING.md, "
                             "Amendment 1); --tracks, --arms and --seeds are ignored")
    parser.add_argument("--commit", action="store_true",
                        help="git-commit each finished run's row and predictions in the repository holding --rows")
    parser.add_argument("--no-report", action="store_true", help="do not rebuild report.md and gains.png")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None,
                        help="train and score every run in this precision (tracks that name their own keep it) "
                             "and count only rows in it as done; default: `dhrd train`'s auto")
    parser.add_argument("--holdout-scores", action="store_true",
                        help="also score every run on the held-out slice of train it never saw (`dhrd evaluate "
                             "--split holdout`), recorded in its row under \"holdout\"")
    parser.add_argument("--scored-esnli", action="store_true",
                        help="print which e-SNLI test rows the committed rows and predictions have scored, and exit")
    args = parser.parse_args()
    if args.scored_esnli:
        print(json.dumps(esnli_rows_scored(args.rows)))
        return 0
    if args.padding:
        for track in args.tracks.split(","):
            for arm in args.arms.split(","):
                print(json.dumps(padding_waste(track, arm)), flush=True)
        return 0
    if args.merge:
        for r in merge_rows(args.merge, args.rows):
            print(f"[study] merged {r['track']} {r['arm']} seed {r['seed']} on {r['machine']['device']}", flush=True)
    elif not args.report_only:
        done = done_runs(read_rows(args.rows), row_device({"machine": row_machine()}), args.precision,
                         args.holdout_scores)
        plan = confirmation_plan() if args.confirmation else [
            (t, a, int(s)) for s in args.seeds.split(",") for t in args.tracks.split(",")
            for a in args.arms.split(",")]  # seed-major: every arm gets seed 0 before any gets seed 1
        for i, (track, arm, seed) in enumerate(plan, 1):
            if (track, arm, seed) in done:
                continue
            print(f"[study] {i}/{len(plan)}: {track} {arm} seed {seed}", flush=True)
            row = run_one(track, arm, seed, args.runs, args.rows, args.precision, args.holdout_scores)
            print(f"[study] {track} {arm} seed {seed}: accuracy {row['metrics']['accuracy']:.4f} "
                  f"({row['train_wall_s']:.0f} s training)", flush=True)
            if args.commit:
                print(f"[study] committed {commit_row(row, args.rows, i, len(plan))}", flush=True)
    if args.no_report:
        return 0
    gains: list = []
    rows = read_rows(args.rows)
    text = report(rows, gains) + "\n" + "\n".join(
        superglue_table([r for r in rows if row_device(r) == device]) for device in dict.fromkeys(map(row_device, rows)))
    out = args.rows.with_name("report.md")
    out.write_text(text + "\n")
    plot(gains, args.rows.with_name("gains.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
