#!/usr/bin/env python3
"""Paired comparison of two runs' predictions on the same examples: accuracy of each, the
difference, and its 95 % paired-bootstrap confidence interval.

    .venv/bin/python scripts/compare_runs.py runs/x/eval/val.predictions.jsonl runs/y/eval/val.predictions.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


def load(path: Path) -> dict[str, bool]:
    """key -> the prediction was right. Rows name the prediction `pred`; files written before that rename
    named it `label`, and still load."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if any(r["gold"] is None for r in rows):
        raise SystemExit(f"{path}: predictions without gold labels cannot be scored")
    return {r["key"]: (r["pred"] if "pred" in r else r["label"]) == r["gold"] for r in rows}


def compare(a: dict[str, bool], b: dict[str, bool], resamples: int = 10_000, seed: int = 0) -> dict:
    keys = sorted(set(a) & set(b))
    if len(keys) != len(a) or len(keys) != len(b):
        raise SystemExit(f"the runs scored different examples ({len(a)} vs {len(b)}, {len(keys)} shared)")
    diffs = [int(a[k]) - int(b[k]) for k in keys]
    rng = random.Random(seed)
    n = len(diffs)
    boot = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {"examples": n, "accuracy_a": sum(a[k] for k in keys) / n, "accuracy_b": sum(b[k] for k in keys) / n,
            "difference": sum(diffs) / n, "ci95": [boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(compare(load(args.a), load(args.b), args.resamples), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
