"""scripts/precision_report.py: issue 33's pairing (fp32 and bf16 rows of one seed, with holdout scores) and
the plan's rule (bf16 is kept only if its mean deficit is under 1 point on both splits)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "precision_report.py"
spec = importlib.util.spec_from_file_location("precision_report", SCRIPT)
precision_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(precision_report)


def row(seed: int, precision: str, selection: float, holdout: float | None) -> dict:
    r = {"track": "esnli", "arm": "a0-2x", "seed": seed, "precision": precision, "examples": 2000,
         "metrics": {"accuracy": selection}}
    if holdout is not None:
        r["holdout"] = {"metrics": {"accuracy": holdout}, "examples": 780}
    return r


def test_pairs_need_both_precisions_and_holdout_scores():
    rows = [row(0, "bf16", 0.646, None),  # the old row: no holdout scores, not paired
            row(0, "fp32", 0.75, 0.74), row(0, "bf16", 0.65, 0.66),
            row(1, "fp32", 0.74, 0.73)]  # seed 1 has no bf16 twin yet
    paired = precision_report.pairs(rows)
    assert list(paired) == [0] and paired[0]["bf16"]["metrics"]["accuracy"] == 0.65


def test_a_large_deficit_on_either_split_sends_auto_to_fp32():
    rows = [r for s, (f, b) in enumerate([(0.75, 0.65), (0.74, 0.69), (0.76, 0.70)])
            for r in (row(s, "fp32", f, 0.72), row(s, "bf16", b, 0.72))]
    v = precision_report.verdict(precision_report.pairs(rows))
    assert v["splits"]["selection"]["fp32_minus_bf16_points"] == [10.0, 5.0, 6.0]
    assert v["splits"]["selection"]["mean"] == pytest.approx(7.0) and v["splits"]["holdout"]["mean"] == 0
    assert v["rule"].startswith("fp32 everywhere")
    assert "| 0 | 0.7500 | 0.6500 | +10.0 |" in precision_report.markdown(v)


def test_bf16_within_a_point_on_both_splits_is_kept():
    rows = [r for s in range(3) for r in (row(s, "fp32", 0.75, 0.72), row(s, "bf16", 0.745 + 0.002 * s, 0.718))]
    v = precision_report.verdict(precision_report.pairs(rows))
    assert v["rule"].startswith("bf16 kept")


def test_fewer_than_three_seeds_decide_nothing():
    rows = [row(0, "fp32", 0.75, 0.74), row(0, "bf16", 0.65, 0.66)]
    assert precision_report.verdict(precision_report.pairs(rows))["rule"].startswith("incomplete")
