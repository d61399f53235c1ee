"""The GPU benchmark's whole pipeline, run on the CPU with a tiny shape before it ever meets a GPU:
build, train, export, forward ceiling, serve with front-end processes, /classify and both CoT modes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loadtest.gpu import Stages, judge


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_cpu_and_reports_every_stage(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.gpu", "--device", "cpu", "--shapes", "tiny", "--quick",
                           "--workers", "1", "--client-processes", "2", "--concurrencies", "1,8",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {s["status"] for s in report["stages"].values()} == {"ok"} and len(report["stages"]) == 6
    tiny = report["shapes"]["tiny"]
    assert tiny["forward"]["eager"]["8"]["seq_per_s"] > 0 and "cuda_graphs" not in tiny["forward"]
    assert [r["connections"] for r in tiny["classify"]["rows"]] == [1, 8]
    assert all(set(r["statuses"]) == {"200"} and r["req_per_s"] > 0 for r in tiny["classify"]["rows"])
    for mode in ("cot_static", "cot_dynamic"):
        assert tiny[mode]["warm"]["ok"] == tiny[mode]["warm"]["requests"] == 4
        assert tiny[mode]["warm"]["generated_tokens_per_s"] > 0
    assert "## tiny" in next(tmp_path.glob("*.md")).read_text()


def test_a_failing_stage_is_recorded_and_the_next_one_still_runs():
    report = {"stages": {}}
    stages = Stages(report, deadline=float("inf"))

    def boom(timeout):
        raise RuntimeError("no CUDA here")

    assert stages.run("first", 10, boom) is None
    assert stages.run("second", 10, lambda timeout: timeout) == 10
    assert report["stages"]["first"]["status"] == "failed" and "no CUDA" in report["stages"]["first"]["error"]
    assert report["stages"]["second"]["status"] == "ok"


def test_stages_past_the_budget_are_skipped_not_started():
    report = {"stages": {}}
    stages = Stages(report, deadline=0.0)
    assert stages.run("late", 10, lambda timeout: 1 / 0) is None
    assert report["stages"]["late"]["status"] == "skipped"


def test_targets_are_judged_from_what_was_measured():
    r = {"ceiling_seq_per_s": 10000.0,
         "classify": {"rows": [{"connections": 1, "req_per_s": 300.0, "p50_ms": 3.1},
                               {"connections": 512, "req_per_s": 6000.0, "p50_ms": 80.0}]}}
    verdict = judge("smollm2-135m", r)
    assert verdict == {"best_req_per_s": 6000.0, "req_per_s_met": True, "share": 0.6, "share_met": True,
                       "batch1_p50_ms": 3.1, "batch1_p50_met": True}
    assert judge("tiny", r) == {}


def test_every_stage_is_saved_as_it_ends():
    saved = []
    report = {"stages": {}, "shapes": {"tiny": {}}}
    stages = Stages(report, deadline=float("inf"), save=lambda r: saved.append(json.loads(json.dumps(r))))
    stages.measure(report["shapes"]["tiny"], "forward", "tiny: forward ceiling", 10, lambda timeout: {"b1": 5})
    assert saved[-1]["stages"]["tiny: forward ceiling"]["status"] == "ok"
    assert saved[-1]["shapes"]["tiny"]["forward"] == {"b1": 5}


@pytest.mark.slow
def test_a_run_killed_midway_leaves_the_report_of_the_stages_it_finished(tmp_path):
    """The rehearsal of a device run cut off by its time limit: the JSON under --out ($OUT) has every
    finished stage, and says it is not complete."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "loadtest.gpu", "--device", "cpu", "--shapes", "tiny", "--quick",
                             "--workers", "1", "--out", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        report: dict = {}
        for _ in range(1200):  # until the first stage (the backbone build) has ended
            found = list(tmp_path.glob("*.json"))
            report = json.loads(found[0].read_text()) if found else {}
            if report.get("stages"):
                break
            assert proc.poll() is None, "the run ended before the rehearsal could kill it"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, stage children included, as a time limit would
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["complete"] is False and report["stages"]["tiny: build"]["status"] == "ok"
    assert "tiny: /classify" not in report["stages"]
