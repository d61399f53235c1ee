"""The load-test runner's smoke mode end to end on a tiny export, so the runner cannot rot."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_smoke_run_writes_json_markdown_and_plot(tiny_export, tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# prose kept\n<!-- measured:start (python -m loadtest.bench writes this block) -->\nold\n"
                          "<!-- measured:end -->\nmore prose\n")
    proc = subprocess.run([sys.executable, "-m", "loadtest.bench", "--export", str(tiny_export), "--smoke",
                           "--only", "dhrd-batched", "naive-unbatched", "cot-batched", "--tokens", "16",
                           "--out", str(tmp_path), "--benchmarks", str(benchmarks)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("*-smoke.json")).read_text())
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["dhrd-batched", "naive-unbatched", "cot-batched"]
    for s in report["scenarios"]:
        assert all(lv["requests"] > 0 and lv["failures"] == 0 for lv in s["levels"]), s
    assert report["scenarios"][1]["levels"][-1]["mean_batch_size"] == 1.0  # batching really off
    assert report["scenarios"][2]["levels"][0]["mean_generated_tokens"] > 0
    assert report["roofline"]["matmul_gflops"]["bfloat16"] > 0
    assert next(tmp_path.glob("*-smoke.png")).stat().st_size > 1000
    summary = report["summary"]
    assert set(summary["ratio_classify_to"]) == {"naive-unbatched", "cot-batched"}
    assert summary["percent_of_bf16_roofline"]["dhrd-batched"] >= 0  # tiny model: far below its roofline
    # and against the ceiling of the dtype the service ran in (float32 where this CPU emulates bf16)
    assert report["serving_dtype"] in ("bfloat16", "float32") and report["forward_only"]["dtype"] == report["serving_dtype"]
    assert summary[f"percent_of_{report['serving_dtype']}_roofline"]["dhrd-batched"] >= 0
    # where the time goes: the service's own metrics per level, and forward passes alone
    level = report["scenarios"][0]["levels"][-1]
    assert 0 < level["forward_busy_percent"] <= 100 and level["handler_ms"] > 0 and level["mean_batch_size"] >= 1
    assert [r["batch"] for r in report["forward_only"]["forward"]] == [1, 8, 16, 32]
    assert summary["percent_of_forward_only"] > 0
    # an accuracy point per measured endpoint, on labelled validation examples
    for s in (report["scenarios"][0], report["scenarios"][2]):
        assert s["accuracy"]["examples"] == 8 and 0 <= s["accuracy"]["accuracy"] <= 1
    half = report["scenarios"][0]["half_load"]
    assert half["requests"] > 0 and half["failures"] == 0
    assert half["target_qps"] == round(report["scenarios"][0]["saturation_qps"] / 2, 2)
    assert summary["at_half_saturation"]["p99_over_p50"] > 0
    # the report's measured block is replaced, the prose around it kept
    text = benchmarks.read_text()
    assert text.startswith("# prose kept\n") and text.endswith("more prose\n") and "\nold\n" not in text
    assert "| dhrd-batched | 4 |" in text and "-smoke.png)" in text


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / ".venv-infinity" / "bin" / "infinity_emb").exists(),
                    reason="the infinity-emb peer is not installed (loadtest/setup_peer.sh)")
def test_peer_scenario_serves_the_hf_export_with_infinity(tmp_path, tiny_backbone, data_dir):
    from training.cli import main
    from training.data import load_examples
    from contract.tasks import get_task

    from ..conftest import write_rationales

    rationales = write_rationales(tmp_path / "r.jsonl", "cb", load_examples(get_task("cb"), "train", data_dir))
    assert main(["train", "--task", "cb", "--backbone", str(tiny_backbone), "--out", str(tmp_path / "run"),
                 "--rationales", str(rationales), "--head", "linear", "--max-steps", "1", "--train-limit", "8",
                 "--eval-limit", "4", "--batch-size", "4", "--no-progress"]) == 0
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "ours"), "--hf-seqcls",
                 str(tmp_path / "hf"), "--verify-examples", "4"]) == 0
    proc = subprocess.run([sys.executable, "-m", "loadtest.bench", "--export", str(tmp_path / "ours"), "--smoke",
                           "--only", "peer-infinity", "--peer-hf", str(tmp_path / "hf"), "--tokens", "16",
                           "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next((tmp_path / "out").glob("*-smoke.json")).read_text())
    assert report["scenarios"][0]["name"] == "peer-infinity"
    assert all(lv["requests"] > 0 and lv["failures"] == 0 for lv in report["scenarios"][0]["levels"])


@pytest.mark.slow
def test_real_lengths_and_int8_scenarios(tiny_export, tmp_path, data_dir):
    """dhrd-real-lengths sends the task's validation inputs as they come (not cut to --tokens); dhrd-int8
    serves the --int8-export (`dhrd quantize`), gate or no gate; without --int8-export it is skipped."""
    from training.cli import main as dhrd

    int8 = tmp_path / "int8"
    assert dhrd(["quantize", str(tiny_export), "--out", str(int8), "--calibration", "4", "--verify-examples", "2",
                 "--data-dir", str(data_dir)]) == 0
    proc = subprocess.run([sys.executable, "-m", "loadtest.bench", "--export", str(tiny_export), "--smoke",
                           "--only", "dhrd-batched", "dhrd-real-lengths", "dhrd-int8", "--tokens", "16",
                           "--int8-export", str(int8), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("*-smoke.json")).read_text())
    fixed, real, q = report["scenarios"]
    assert (fixed["name"], real["name"], q["name"]) == ("dhrd-batched", "dhrd-real-lengths", "dhrd-int8")
    for s in report["scenarios"]:
        assert all(lv["requests"] > 0 and lv["failures"] == 0 for lv in s["levels"]), s
    assert fixed["levels"][0]["mean_input_tokens"] == 16.0  # cut to --tokens
    assert real["levels"][0]["mean_input_tokens"] != 16.0  # CB's validation inputs at their own lengths
    assert q["int8"] and report["int8_export"] == str(int8) and not report["skipped"][1:]

    proc = subprocess.run([sys.executable, "-m", "loadtest.bench", "--export", str(tiny_export), "--smoke",
                           "--only", "dhrd-int8", "--out", str(tmp_path / "none")], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next((tmp_path / "none").glob("*-smoke.json")).read_text())
    assert report["scenarios"] == [] and any(s.startswith("dhrd-int8: no --int8-export") for s in report["skipped"])
