"""The front-end proxy benchmark runs end to end: a null server and `dhrd serve` with the tiny fixture
model, each driven by the raw keep-alive client, one JSON report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_frontend_proxy_measures_both_servers_in_one_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.frontend", "proxy", "--seconds", "1", "--connections", "8",
                           "--stub-forward", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    for side in ("null_server", "dhrd"):
        assert report[side]["req_per_s"] > 0 and set(report[side]["statuses"]) == {"200"}, report[side]
    assert 0 < report["dhrd_share_of_null_percent"] < 100
    assert report["machine"]["cpu"] and report["commit"]
    stubbed = report["variants"]["one-process-stub-forward"]
    assert stubbed["req_per_s"] > 0 and set(stubbed["statuses"]) == {"200"}, stubbed


@pytest.mark.parametrize("workers", ["0", "1"])
def test_the_stubbed_server_answers_fixed_probabilities_in_one_process_and_from_an_engine_process(tmp_path, workers):
    """The stub reaches the engine process too (spawned: it imports the main module again), or the
    engine's CPU measured with --stub-forward would be the real forward pass's."""
    import httpx

    from loadtest.frontend.proxy import BODY, TINY_EXPORT
    from loadtest.servers import free_port, spawn_until_ready, stop

    port = free_port()
    proc = spawn_until_ready([sys.executable, "-m", "loadtest.frontend.stub_serve", "serve", "--model", f"cb={TINY_EXPORT}",
                              "--port", str(port), "--workers", workers, "--log-level", "warning"],
                             f"http://127.0.0.1:{port}/ready", tmp_path / "serve.log", timeout=120, poll=0.2)
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/classify", content=BODY, timeout=30,
                            headers={"content-type": "application/json"}).json()
    finally:
        stop(proc, timeout=30)
    assert answer["data"][0]["probs"] == [1 / 3] * 3, answer


def test_the_asgi_cost_benchmark_reports_each_way_and_the_http_layer(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.frontend", "asgi", "--rounds", "1", "--requests", "64",
                           "--concurrency", "8", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(report["median_cpu_us_per_request"]) == {"route", "fast-path", "work-only"}
    assert all(v > 0 for v in report["median_cpu_us_per_request"].values())
    assert set(report["http_layer_us"]) == {"route", "fast-path"} and report["machine"]["cpu"]
