"""Issue 33's table and rule: fp32 against bf16 training, paired by seed, on both splits of its plan.

    .venv/bin/python scripts/precision_report.py                 # reads reports/precision/rows.jsonl
    .venv/bin/python scripts/precision_report.py --markdown      # the table as TRAINING.md shows it

Pairs the `a0-2x` rows of the `esnli` track that carry holdout scores (the plan's runs, TRAINING.md
"Precision"), one fp32 and one bf16 per seed, and reports each seed's accuracy in both precisions on the
selection split and on the unseen held-out slice of train, the paired differences (fp32 - bf16, in
points) with their t-interval over seeds, and the plan's rule: `--precision auto` keeps bf16 only if
bf16's mean deficit is under 1 point on both splits.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
from study.runs import read_rows, row_precision  # noqa: E402
from study.statistics import seed_test  # noqa: E402

ROWS = REPO / "reports" / "precision" / "rows.jsonl"
DEFICIT_POINTS = 1.0  # the plan's threshold: bf16 must stay within this of fp32, mean over seeds, on both splits


def pairs(rows: list[dict], track: str = "esnli", arm: str = "a0-2x") -> dict[int, dict[str, dict]]:
    """seed -> {"fp32": row, "bf16": row}, from the rows with holdout scores (the last of each wins)."""
    by_seed: dict[int, dict[str, dict]] = {}
    for r in rows:
        if r["track"] == track and r["arm"] == arm and "holdout" in r:
            by_seed.setdefault(r["seed"], {})[row_precision(r)] = r
    return {s: p for s, p in sorted(by_seed.items()) if {"fp32", "bf16"} <= set(p)}


def verdict(paired: dict[int, dict[str, dict]]) -> dict:
    """Per split: per-seed accuracies, fp32 - bf16 in points, their seed test; and the plan's rule."""
    splits = {"selection": lambda r: r["metrics"]["accuracy"], "holdout": lambda r: r["holdout"]["metrics"]["accuracy"]}
    out: dict = {"seeds": list(paired), "splits": {}}
    for name, acc in splits.items():
        diffs = [100 * (acc(p["fp32"]) - acc(p["bf16"])) for p in paired.values()]
        test = seed_test(diffs) if diffs else None
        out["splits"][name] = {
            "fp32": [acc(p["fp32"]) for p in paired.values()], "bf16": [acc(p["bf16"]) for p in paired.values()],
            "examples": sorted({p["fp32"]["examples"] if name == "selection" else p["fp32"]["holdout"]["examples"]
                                for p in paired.values()}),
            "fp32_minus_bf16_points": [round(d, 2) for d in diffs],
            "mean": None if test is None else round(test.mean, 2),
            "t_interval": None if test is None or test.n < 2 else [round(test.lo, 2), round(test.hi, 2)],
            "t_p_two_sided": None if test is None or test.n < 2 else round(test.t_p, 4),
            "sign_flip_p_two_sided": None if test is None or test.n < 2 else round(test.flip_p, 4)}
    means = [s["mean"] for s in out["splits"].values()]
    complete = len(paired) == 3
    out["rule"] = ("incomplete: the plan pairs seeds 0, 1 and 2" if not complete else
                   "bf16 kept where native: its mean deficit is under 1 point on both splits"
                   if all(m < DEFICIT_POINTS for m in means) else
                   "fp32 everywhere: bf16's mean deficit is 1 point or more on at least one split")
    return out


def markdown(v: dict) -> str:
    lines = ["| seed | selection fp32 | selection bf16 | Δ (pts) | held-out fp32 | held-out bf16 | Δ (pts) |",
             "|---|---|---|---|---|---|---|"]
    sel, hold = v["splits"]["selection"], v["splits"]["holdout"]
    for i, seed in enumerate(v["seeds"]):
        lines.append(f"| {seed} | {sel['fp32'][i]:.4f} | {sel['bf16'][i]:.4f} | {sel['fp32_minus_bf16_points'][i]:+.1f} "
                     f"| {hold['fp32'][i]:.4f} | {hold['bf16'][i]:.4f} | {hold['fp32_minus_bf16_points'][i]:+.1f} |")
    for name, s in (("selection", sel), ("held-out", hold)):
        if s["t_interval"]:
            lines.append(f"\n{name}: mean fp32 - bf16 {s['mean']:+.2f} points, 95 % t-interval over seeds "
                         f"[{s['t_interval'][0]:+.2f}, {s['t_interval'][1]:+.2f}], two-sided t p = "
                         f"{s['t_p_two_sided']}, exact sign-flip p = {s['sign_flip_p_two_sided']} "
                         f"({', '.join(map(str, s['examples']))} examples)")
    lines.append(f"\nRule (TRAINING.md, the plan): {v['rule']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=Path, default=ROWS)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    v = verdict(pairs(read_rows(args.rows)))
    print(markdown(v) if args.markdown else json.dumps(v, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
