"""Measure one scenario: its server up, a Locust run per concurrency level, half load and accuracy, server down."""
from __future__ import annotations

import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import httpx

from .. import REPO
from ..servers import BIN, free_port, start_peer, start_server, stop
from .accuracy import accuracy
from .parsing import counters, locust_stats, server_side
from .scenarios import ACCURACY_OF, Scenario

HALF_LOAD_USERS = 16


def run_locust(port: int, user: str, users: int, seconds: int, env: dict, out_prefix: Path) -> dict:
    cmd = [str(BIN / "locust"), "-f", str(REPO / "loadtest" / "bench" / "locustfile.py"), "--headless",
           "--host", f"http://127.0.0.1:{port}", "--users", str(users), "--spawn-rate", str(users),
           "--run-time", f"{seconds}s", "--csv", str(out_prefix), "--only-summary", "--stop-timeout", "60", user]
    subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=seconds + 180)
    return locust_stats(f"{out_prefix}_stats.csv", users)


def scrape(port: int) -> dict[str, float]:
    """The service's own counters (summed over labels), read before and after each level."""
    return counters(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


def measure(export: Path, model: str, scenario: Scenario, seconds: int, workdir: Path,
            peer_hf: Path | None = None, accuracy_limit: int | None = None, int8_export: Path | None = None) -> dict:
    port = free_port()
    log = workdir / f"{scenario.name}.log"
    served = int8_export if scenario.int8 else export
    server = start_peer(peer_hf, port, log) if scenario.peer else start_server(served, model, port,
                                                                               scenario.serve_flags, log)
    result: dict = {**asdict(scenario)}
    try:
        levels = [level(port, scenario, users, seconds, workdir) for users in scenario.users]
        result.update(levels=levels, saturation_qps=max(lv["qps"] for lv in levels))
        if scenario.half_load:
            result["half_load"] = half_load(port, scenario, result["saturation_qps"], seconds, workdir)
        if scenario.name in ACCURACY_OF:
            result["accuracy"] = scenario_accuracy(port, model, scenario, accuracy_limit)
    finally:
        stop(server)
    return result


def level(port: int, scenario: Scenario, users: int, seconds: int, workdir: Path) -> dict:
    """One closed-loop level of `users` users; server-side numbers only from `dhrd serve` (the peer
    lacks its counters)."""
    before = None if scenario.peer else scrape(port)
    run_seconds = seconds * (2 if scenario.slow else 1)
    result = run_locust(port, scenario.user, users, run_seconds, scenario.env, workdir / f"{scenario.name}-{users}")
    if before is not None:
        result.update(server_side(before, scrape(port), run_seconds))
    print(f"[loadtest] {scenario.name} users={users}: {result['qps']:.2f} req/s, "
          f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, failures {result['failures']}",
          flush=True)
    return result


def half_load(port: int, scenario: Scenario, saturation: float, seconds: int, workdir: Path) -> dict:
    """Latency at half the saturation rate, offered open-loop-like: HALF_LOAD_USERS users, each paced
    to saturation / 2 / users requests per second (Locust's constant_throughput)."""
    users = HALF_LOAD_USERS
    pace = saturation / 2 / users
    before = scrape(port)
    result = run_locust(port, scenario.user, users, seconds, {**scenario.env, "DHRD_LOAD_PACE": f"{pace:.4f}"},
                        workdir / f"{scenario.name}-half")
    result.update(server_side(before, scrape(port), seconds), target_qps=round(saturation / 2, 2))
    print(f"[loadtest] {scenario.name} at half load ({result['target_qps']} req/s offered): {result['qps']:.2f} req/s, "
          f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms", flush=True)
    return result


def scenario_accuracy(port: int, model: str, scenario: Scenario, limit: int | None) -> dict:
    path, tokens_env = ACCURACY_OF[scenario.name]
    tokens = int(scenario.env[tokens_env]) if tokens_env else None
    result = accuracy(port, os.environ.get("DHRD_LOAD_TASK", model), model, path, limit, tokens)
    print(f"[loadtest] {scenario.name} accuracy: {result}", flush=True)
    return result
