"""The int8 probe and gate (`python -m loadtest.forward int8 [--gate]`) on the tiny export: it builds the int8
model from train inputs, ranks the layers' sensitivity on other train inputs, compares its answers with the
float model's, checks batch invariance and speed, and judges the gate's thresholds."""
from __future__ import annotations

import json

import pytest

from loadtest.forward import int8 as probe
from loadtest.forward.int8 import GATE, gate, main, measure, resolve_keep_float
from contract.cpu import cpu_kind


def test_the_probe_reports_agreement_invariance_speed_and_a_ranking(tiny_export, data_dir, monkeypatch):
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    r = measure(tiny_export, "val", limit=16, calibration=8, seconds=0.05, dtype="float32", alpha=0.5,
                keep_float=["top:2"], invariance=3, max_batch_size=8, max_batch_tokens=4096, rank_inputs=4)
    answers = r["answers"]["int8_vs_float32"]
    assert list(r["answers"]) == ["int8_vs_float32"]  # no floor to report when the float dtype is float32
    assert answers["inputs"] == 16 and 0.0 <= answers["agreement"] <= 1.0
    assert 0.0 <= answers["p99_abs_dprob"] <= answers["max_abs_dprob"] < 0.5  # close, not equal: it is int8
    assert answers["max_abs_dprob"] > 0
    assert r["batch_invariance_max_abs_dprob"]["int8"] < 0.005  # per-token scales: a neighbour moves nothing
    assert r["throughput"]["int8"]["sequences"] > 0 and r["throughput"]["float32"]["sequences"] > 0
    assert r["calibration_inputs"] == 8 and r["ranking_inputs"] == 4
    ranking = r["sensitivity_ranking"]
    means = [row["mean_abs_dprob"] for row in ranking]
    assert means == sorted(means, reverse=True) and means[0] > 0  # most sensitive first
    assert r["keep_float"] == [row["layer"] for row in ranking[:2]]  # top:2 keeps the two most sensitive


def test_with_a_bf16_service_the_floor_is_reported_beside_int8(tiny_export, data_dir, monkeypatch):
    """Where the service would serve bf16, int8 is compared with both, and bf16 with float32: how far the
    default dtype itself moves the answers."""
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    r = measure(tiny_export, "val", limit=8, calibration=4, seconds=0.05, dtype="bfloat16", alpha=0.5,
                keep_float=[], invariance=2, max_batch_size=8, max_batch_tokens=4096)
    assert list(r["answers"]) == ["int8_vs_float32", "int8_vs_bfloat16", "bfloat16_vs_float32"]
    assert all(a["inputs"] == 8 and a["max_abs_dprob"] > 0 for a in r["answers"].values())
    assert r["speedup_vs_dtype"] > 0 and "bfloat16" in r["throughput"]


def test_the_ranking_leaves_the_float_model_as_it_found_it(tiny_export, data_dir, monkeypatch):
    from service.device.runner import ModelRunner

    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    reference = ModelRunner.from_export(tiny_export, dtype="float32")
    smoothed = probe.smoothed_copy(reference, [[5, 6, 7, 8]], 0.5, "float32")
    ids = [[5, 9, 11, 4], [7, 7, 3]]
    before = smoothed.predict(ids)
    probe.rank_layers(reference, smoothed, ids)
    assert smoothed.predict(ids) == before  # every layer is put back in float after its turn


def test_the_gate_fails_on_any_threshold_and_names_it():
    result = {"answers": {"int8_vs_float32": {"agreement": 0.996, "p99_abs_dprob": 0.01, "max_abs_dprob": 0.04}},
              "batch_invariance_max_abs_dprob": {"int8": 0.001}}
    assert gate(result)["passed"] and gate(result)["failed"] == []
    result["answers"]["int8_vs_float32"]["agreement"] = 0.994
    result["batch_invariance_max_abs_dprob"]["int8"] = 0.006
    verdict = gate(result)
    assert not verdict["passed"] and verdict["failed"] == ["agreement", "batch_invariance_max_abs_dprob"]
    assert verdict["thresholds"] == GATE


def test_keep_float_names_pass_through_and_top_k_needs_a_ranking():
    assert resolve_keep_float(["layers.0.mlp.up_proj"], None) == ["layers.0.mlp.up_proj"]
    ranking = [{"layer": "b"}, {"layer": "a"}, {"layer": "c"}]
    assert resolve_keep_float(["top:2"], ranking) == ["b", "a"]
    with pytest.raises(ValueError, match="ranking"):
        resolve_keep_float(["top:1"], None)


def test_the_gate_report_lands_under_reports_int8_in_the_issues_schema(tiny_export, data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    monkeypatch.setattr("loadtest.provenance.REPO", tmp_path)
    main(["--export", str(tiny_export), "--limit", "8", "--calibration", "4", "--seconds", "0.05",
          "--dtype", "float32", "--invariance", "2", "--gate"])
    (written,) = (tmp_path / "reports" / "int8").glob("*.json")
    report = json.loads(written.read_text())
    assert written.name.startswith(cpu_kind() + "-") and written.name.endswith(report["date"][:10] + ".json")
    for key in ("cpu", "default_dtype", "agreement", "p99_abs_dprob", "max_abs_dprob",
                "batch_invariance_max_abs_dprob", "speedup_vs_default", "commit", "command", "passed"):
        assert key in report
    assert report["default_dtype"] == "float32" and report["speedup_vs_default"] > 0


def test_cpu_kind_names_the_model_and_its_best_flag():
    assert cpu_kind("AMD EPYC", {"avx2": True, "avx512f": True, "avx512_bf16": True}) == "amd-epyc-avx512-bf16"
    assert cpu_kind("AMD EPYC", {"avx2": True}) == "amd-epyc-avx2"
    assert cpu_kind("Intel(R) Xeon(R) Platinum 8480+", {"amx_int8": True}) == "intel-xeon-platinum-8480-amx"


def test_the_confirmation_split_is_refused_before_anything_loads():
    with pytest.raises(SystemExit, match="confirmation"):
        main(["--export", "nowhere", "--split", "confirm"])


def test_top_k_without_a_ranking_is_refused_before_anything_loads():
    with pytest.raises(SystemExit, match="rank-inputs"):
        main(["--export", "nowhere", "--keep-float", "top:3"])


def test_the_gate_judges_an_int8_export_and_records_its_verdict_in_it(tiny_export, data_dir, monkeypatch, tmp_path):
    """`--int8-export Q --gate`: Q (written by `dhrd quantize`) is what is judged, and the verdict for this
    kind of CPU lands in Q, where `dhrd serve` looks for it."""
    from contract.int8 import gate_for
    from training.cli import main as dhrd

    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    monkeypatch.setattr("loadtest.provenance.REPO", tmp_path)
    q = tmp_path / "q"
    assert dhrd(["quantize", str(tiny_export), "--out", str(q), "--calibration", "4", "--verify-examples", "2"]) == 0
    main(["--export", str(tiny_export), "--int8-export", str(q), "--limit", "8", "--seconds", "0.05",
          "--dtype", "float32", "--invariance", "2", "--gate"])
    (written,) = (tmp_path / "reports" / "int8").glob("*.json")
    report = json.loads(written.read_text())
    assert report["measurement"]["int8_export"] == str(q) and report["measurement"]["calibration_inputs"] == 4
    verdict = gate_for(q, cpu_kind())
    assert verdict["passed"] == report["passed"] and verdict["agreement"] == report["agreement"]
