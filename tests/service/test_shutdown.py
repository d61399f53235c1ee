"""SIGTERM under load: `dhrd serve` fails readiness, finishes what is queued within the grace period,
and answers anything left with a JSON 503; no request gets a 500 or a cut connection."""
from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from loadtest.servers import free_port, spawn_until_ready

pytestmark = pytest.mark.slow
BODY = {"model": "cb", "input": [{"premise": f"It rained on day {i}.", "hypothesis": "It was wet."} for i in range(64)]}


def sigterm_under_load(export: Path, tmp_path: Path, grace_s: float, clients: int = 16) -> Counter:
    """Start the service, put `clients` requests of 64 inputs in flight (one sequence per forward pass,
    so they queue), SIGTERM it, and classify every answer. The request deadline is far (120 s), so
    the honest queue admits them all: what happens to them is the drain's doing alone."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "dhrd"), "serve", "--model", f"cb={export}", "--port", str(port),
           "--dtype", "float32", "--max-batch-size", "1", "--max-wait-ms", "0", "--max-queue", "4096", "--request-timeout-s", "120",
           "--shutdown-grace-s", str(grace_s),
           "--log-level", "warning"]
    proc = spawn_until_ready(cmd, f"http://127.0.0.1:{port}/ready", tmp_path / "serve.log", timeout=120)

    async def one(client: httpx.AsyncClient) -> str:
        try:
            r = await client.post(f"http://127.0.0.1:{port}/classify", json=BODY)
        except httpx.HTTPError as exc:
            return f"transport:{type(exc).__name__}"
        if r.status_code == 200:
            return "completed"
        is_json = r.headers.get("content-type", "").startswith("application/json")
        return f"{r.status_code}:{r.json()['error']['type'] if is_json else 'not-json'}"

    async def go() -> Counter:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
            tasks = [asyncio.create_task(one(client)) for _ in range(clients)]
            await asyncio.sleep(1.0)  # all sent and queued
            proc.send_signal(signal.SIGTERM)
            return Counter(await asyncio.gather(*tasks))

    try:
        outcomes = asyncio.run(go())
        # uvicorn re-raises the captured SIGTERM once shut down, so a clean stop exits "by signal 15"
        assert proc.wait(timeout=grace_s + 30) in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    return outcomes


def test_sigterm_with_a_long_grace_completes_every_request(tiny_export, tmp_path):
    outcomes = sigterm_under_load(tiny_export, tmp_path, grace_s=60)
    assert outcomes == Counter(completed=16), outcomes


def test_sigterm_with_a_short_grace_answers_the_rest_503_json(tiny_export, tmp_path):
    outcomes = sigterm_under_load(tiny_export, tmp_path, grace_s=0.2)
    assert set(outcomes) <= {"completed", "503:shutting_down"}, outcomes
    assert outcomes["503:shutting_down"] >= 1, outcomes
