"""The front-end proxy benchmark runs end to end: a null server and `dhrd serve` with the tiny fixture
model, each driven by the raw keep-alive client, one JSON report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_frontend_proxy_measures_both_servers_in_one_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.frontend", "--seconds", "1", "--connections", "8",
                           "--stub-forward", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    for side in ("null_server", "dhrd"):
        assert report[side]["req_per_s"] > 0 and set(report[side]["statuses"]) == {"200"}, report[side]
    assert 0 < report["dhrd_share_of_null_percent"] < 100
    assert report["machine"]["cpu"] and report["commit"]
    stubbed = report["variants"]["one-process-stub-forward"]
    assert stubbed["req_per_s"] > 0 and set(stubbed["statuses"]) == {"200"}, stubbed


def test_the_stubbed_server_refuses_an_engine_process_it_could_not_stub():
    proc = subprocess.run([sys.executable, "-m", "loadtest.stub_serve", "serve", "--model", "cb=x", "--workers", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "one process only" in proc.stderr


def test_the_asgi_cost_benchmark_reports_each_way_and_the_http_layer(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.asgi_cost", "--rounds", "1", "--requests", "64",
                           "--concurrency", "8", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(report["median_cpu_us_per_request"]) == {"route", "fast-path", "work-only"}
    assert all(v > 0 for v in report["median_cpu_us_per_request"].values())
    assert set(report["http_layer_us"]) == {"route", "fast-path"} and report["machine"]["cpu"]
