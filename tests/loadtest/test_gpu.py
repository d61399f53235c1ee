"""The GPU kit, rehearsed on the CPU with a tiny shape before it ever meets a GPU: each device call's
fixed stage list end to end within its budget, a run killed after its first stage, a stage that does
not fit skipped and recorded, and the bounded CoT round."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from loadtest import REPO
from loadtest.gpu import serving
from loadtest.gpu.plan import CALLS, QUICK_BUDGETS, WATCHDOG_GRACE_S, plan, plan_lines
from loadtest.gpu.report import judge
from loadtest.gpu.stages import Stages

REHEARSAL = [sys.executable, "-m", "loadtest.gpu", "--device", "cpu", "--shape", "tiny", "--quick",
             "--workers", "1", "--client-processes", "2", "--concurrencies", "1,8"]


def rehearse(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([*REHEARSAL, *extra, "--out", str(tmp_path)], capture_output=True, text=True, timeout=400)
    return proc, json.loads(next(tmp_path.glob("*.json")).read_text())


@pytest.mark.slow
def test_call_1_runs_end_to_end_on_cpu_within_its_budget_and_reports_every_stage(tmp_path):
    started = time.monotonic()
    proc, report = rehearse(tmp_path, "--call", "1", "--budget-s", "240")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - started < 240 + WATCHDOG_GRACE_S
    assert report["complete"] is True and list(report["plan"]) == list(CALLS["1"]["budgets"])
    assert [s["status"] for s in report["stages"].values()] == ["ok"] * 5
    assert all(s["seconds"] <= s["budget_s"] for s in report["stages"].values())
    tiny = report["shapes"]["tiny"]
    assert tiny["write"]["weights_bytes"] > 0 and tiny["write"]["base"]  # the CoT stage's causal LM too
    assert tiny["forward"]["eager"]["8"]["seq_per_s"] > 0 and "cuda_graphs" not in tiny["forward"]
    for key in ("null_server", "classify"):
        assert [r["connections"] for r in tiny[key]["rows"]] == [1, 8]
        assert all(set(r["statuses"]) == {"200"} and r["req_per_s"] > 0 for r in tiny[key]["rows"])
    assert tiny["classify"]["flags"][0] == "--no-verify-hashes"  # hashed once, when the kit wrote it
    assert tiny["batch1"]["classify_p50_ms"] > 0 and tiny["batch1"]["forward_eager_ms"] > 0
    cot = tiny["cot"]["round"]
    assert cot["ok"] == cot["requests"] == 4 and cot["cut_off"] == 0 and cot["generated_tokens_per_s"] > 0
    assert "## tiny" in next(tmp_path.glob("*.md")).read_text()


@pytest.mark.slow
def test_call_2_runs_end_to_end_on_cpu_within_its_budget(tmp_path):
    proc, report = rehearse(tmp_path, "--call", "2", "--budget-s", "200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(report["stages"]) == ["tiny: write", "tiny: ceiling", "tiny: classify"]
    assert {s["status"] for s in report["stages"].values()} == {"ok"}
    tiny = report["shapes"]["tiny"]
    assert tiny["write"]["base"] is None  # call 2 has no CoT stage: no causal LM written
    assert all(set(r["statuses"]) == {"200"} for r in tiny["classify"]["rows"])


def test_a_stage_that_does_not_fit_the_calls_budget_is_skipped_and_recorded_in_the_report(tmp_path):
    """Call 2 with the write stage's budget over the call's: nothing is started, every stage says why."""
    proc, report = rehearse(tmp_path, "--call", "2", "--budget-s", "100", "--stage-budget", "write=500")
    assert proc.returncode == 1  # not every stage ran
    assert report["complete"] is True
    stages = report["stages"]
    assert stages["tiny: write"]["status"] == "skipped" and "500 s does not fit" in stages["tiny: write"]["reason"]
    assert stages["tiny: ceiling"] == stages["tiny: classify"] == {
        "status": "skipped", "reason": "no export: the write stage did not succeed"}


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


def test_a_stage_whose_budget_exceeds_what_is_left_is_skipped_though_time_remains():
    report, started = {"stages": {}}, []
    stages = Stages(report, deadline=time.monotonic() + 30)
    assert stages.run("big", 60, lambda timeout: started.append(timeout)) is None
    assert stages.run("small", 5, lambda timeout: started.append(timeout) or "done") == "done"
    assert started == [5]  # the big one was never started; its budget is the small one's limit
    assert "60 s does not fit" in report["stages"]["big"]["reason"]


def test_the_plan_is_two_calls_within_the_run_tools_limits():
    calls = plan()
    assert [c["command"] for c in calls] == ["bash loadtest/gpu/run.sh --call 1", "bash loadtest/gpu/run.sh --call 2"]
    for c in calls:
        assert c["timeout_s"] <= 300 and c["carry"] == [".gpu-wheels"]
        assert sum(c["stages"].values()) <= c["budget_s"] < c["timeout_s"]
    assert set(CALLS["1"]["budgets"]) == {"write", "ceiling", "null", "classify", "cot"}
    assert set(CALLS["2"]["budgets"]) == {"write", "ceiling", "classify"}
    assert sum(QUICK_BUDGETS[s] for s in CALLS["1"]["budgets"]) <= 240  # the rehearsal's budget


def test_benchmarks_md_gives_the_calls_the_kit_plans():
    text = (REPO / "BENCHMARKS.md").read_text()
    assert all(line in text for line in plan_lines())
    assert "7 min" not in text


def test_the_cot_round_is_cut_at_its_seconds_and_says_how_many_did_not_finish():
    """A server that never answers (a decoder far slower than planned): the round ends on time."""
    async def main() -> dict:
        server = await asyncio.start_server(lambda r, w: asyncio.sleep(3600), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await serving._cot_round(port, requests=3, new_tokens=8, seconds=0.5)
        finally:
            server.close()

    started = time.monotonic()
    out = asyncio.run(main())
    assert time.monotonic() - started < 5
    assert out["requests"] == 3 and out["ok"] == 0 and out["cut_off"] == 3


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
def test_a_run_killed_after_its_first_stage_leaves_a_valid_partial_report(tmp_path):
    """The rehearsal of a device run cut off by its time limit: SIGKILL to the whole run once the first
    stage (the export) has ended; the JSON under --out ($OUT) parses, has that stage, says it is not
    complete, and names the stage that was running."""
    proc = subprocess.Popen([*REHEARSAL, "--call", "1", "--out", str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        report: dict = {}
        for _ in range(1200):  # until the first stage has ended
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
    assert report["complete"] is False and report["stages"]["tiny: write"]["status"] == "ok"
    assert report["shapes"]["tiny"]["write"]["weights_bytes"] > 0
    assert report.get("running") in (None, "tiny: ceiling") and "tiny: classify" not in report["stages"]


def test_the_watchdog_ends_an_overrunning_run_with_its_report_saved(tmp_path):
    """A stage that ignores its budget: the watchdog records it as timed out, saves, and exits 3."""
    code = ("import time; from pathlib import Path; from loadtest.gpu import stages\n"
            "report = {'stages': {'a': {'status': 'ok'}}, 'running': 'b', 'complete': False}\n"
            f"stages.watchdog(report, stages.saver(Path({str(tmp_path / 'r.json')!r})), 0.3)\n"
            "time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stages"]["b"] == {"status": "timeout", "error": "the call's budget ran out (kit watchdog)"}
    assert report["watchdog"] is True and report["complete"] is False
