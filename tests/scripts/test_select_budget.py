"""Choosing epochs and learning rate on a held-out slice of train: the commands it runs and how it picks."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # as `python scripts/select_budget.py` has it: the study beside it
spec = importlib.util.spec_from_file_location("select_budget", REPO / "scripts" / "select_budget.py")
select = importlib.util.module_from_spec(spec)
spec.loader.exec_module(select)  # type: ignore[union-attr]


def row(arm: str, lr: str, seed: int, scores: list[float]) -> dict:
    return {"track": "esnli", "arm": arm, "lr": lr, "seed": seed, "epochs": 3, "train_examples": 1400,
            "val_examples": 500, "curve": [{"epoch": k, "score": s} for k, s in enumerate(scores, 1)],
            "train_wall_s": 10.0, "commit": "abc", "date": "d", "machine": {"cpu": "X", "device": "cpu"}}


def test_a_run_validates_on_the_held_out_slice_and_trains_every_epoch_budget_point(tmp_path):
    cmd = select.train_command("esnli", "a1-suffix", "1e-4", 0, 3, tmp_path / "run")
    assert cmd[cmd.index("--holdout") + 1] == str(select.HOLDOUT)
    assert cmd[cmd.index("--epochs") + 1] == "3" and cmd[cmd.index("--lr") + 1] == "1e-4"
    assert cmd[cmd.index("--lm-span") + 1] == "suffix"


def test_arms_that_fix_their_own_epochs_cannot_be_selected_over():
    with pytest.raises(SystemExit, match="a0-2x"):
        select.selection_flags("a0-2x")


def test_the_choice_is_the_best_mean_over_seeds_of_each_lr_and_epoch():
    rows = [row("a0", "3e-5", 0, [0.60, 0.70, 0.72]), row("a0", "3e-5", 1, [0.62, 0.74, 0.66]),
            row("a0", "1e-4", 0, [0.71, 0.69, 0.65])]
    lr, epoch, score = select.best(rows)
    assert (lr, epoch) == ("3e-5", 2) and score == pytest.approx(0.72)


def test_report_shows_each_curve_and_the_choice_per_arm():
    text = select.report([row("a0", "3e-5", 0, [0.6, 0.7, 0.65]), row("a1-suffix", "3e-5", 0, [0.62, 0.71])])
    assert "| a0 | 3e-5 | 0 | 0.600 | 0.700 | 0.650 |" in text
    assert "| a1-suffix | 3e-5 | 0 | 0.620 | 0.710 | — |" in text
    assert "**a0**: best held-out score 0.700 at lr 3e-5, 2 epoch(s)" in text


def test_one_run_appends_its_held_out_curve(tmp_path, monkeypatch, tiny_backbone, data_dir):
    monkeypatch.setitem(select.TRACKS, "cb-tiny", {"task": "cb", "train_limit": 16})
    monkeypatch.setattr(select, "EVAL_LIMIT", 8)
    monkeypatch.setattr(select, "selection_flags", lambda arm: [
        "--alpha", "0", "--backbone", str(tiny_backbone), "--batch-size", "4", "--grad-accum", "1"])
    rows = tmp_path / "selection.jsonl"
    r = select.run_one("cb-tiny", "a0", "3e-5", 0, 2, tmp_path / "runs", rows)
    assert [c["epoch"] for c in r["curve"]] == [1, 2] and r["val_examples"] == 8
    assert select.read_rows(rows) == [r]
    assert not (tmp_path / "runs" / "cb-tiny" / "a0-lr3e-5-e2-s0" / "checkpoints" / "last.pt").exists()
