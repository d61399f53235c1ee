"""The int8 probe (`python -m loadtest.forward int8`) on the tiny export: it builds the int8 model from
train inputs, compares its answers with the float model's, and checks batch invariance and speed."""
from __future__ import annotations

import pytest

from loadtest.forward.int8 import main, measure


def test_the_probe_reports_agreement_invariance_and_speed(tiny_export, data_dir, monkeypatch):
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    r = measure(tiny_export, "val", limit=16, calibration=8, seconds=0.05, dtype="float32", alpha=0.5,
                keep_float=["layers.1.mlp.down_proj"], invariance=3, max_batch_size=8, max_batch_tokens=4096)
    answers = r["answers_vs_float"]
    assert answers["inputs"] == 16 and 0.0 <= answers["agreement"] <= 1.0
    assert 0.0 <= answers["p99_abs_dprob"] <= answers["max_abs_dprob"] < 0.5  # close, not equal: it is int8
    assert answers["max_abs_dprob"] > 0
    assert r["batch_invariance_max_abs_dprob"]["int8"] < 0.005  # per-token scales: a neighbour moves nothing
    assert r["throughput"]["int8"]["sequences"] > 0 and r["throughput"]["float32"]["sequences"] > 0
    assert r["calibration_inputs"] == 8 and r["keep_float"] == ["layers.1.mlp.down_proj"]


def test_the_confirmation_split_is_refused_before_anything_loads():
    with pytest.raises(SystemExit, match="confirmation"):
        main(["--export", "nowhere", "--split", "confirm"])
