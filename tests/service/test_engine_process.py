"""`--workers N`: front ends tokenise, the engine process computes. The same answers as one process,
the engine's errors as the same JSON, drains and deaths handled (ARCHITECTURE.md, supervisor.py)."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from loadtest.servers import free_port
from service.engine import ipc
from service.engine.process import EngineServer
from service.errors import Overloaded, ServiceError
from service.http.error_mapping import http_headers, http_status
from service.device.runner import ModelRunner
from service.settings import Settings

from .conftest import serving

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "export-v1-cb"
PAIR = {"premise": "It rained all day.", "hypothesis": "The streets were wet."}


def run(coro):
    return asyncio.run(coro)


class SlowRunner(ModelRunner):
    """The fixture model with a slow forward pass, so work queues up in the engine."""

    delay = 0.0
    computed = 0

    def predict(self, batch):
        time.sleep(self.delay)
        SlowRunner.computed += len(batch)
        return super().predict(batch)


@asynccontextmanager
async def engine_and_front(tmp_path, delay: float = 0.0, **settings):
    """An engine server and a front-end app in this event loop, joined by a real Unix socket."""
    s = Settings(models={"cb": FIXTURE}, dtype="float32", **settings)
    runner = SlowRunner.from_export(FIXTURE, dtype="float32")
    runner.delay = delay
    socket_path = str(tmp_path / "engine.sock")
    stop = asyncio.Event()
    engine = EngineServer(s, socket_path, runners={"cb": runner})
    task = asyncio.create_task(engine.serve(False, stop))
    try:
        async with serving(s, engine_socket=socket_path) as client:
            yield client, engine
    finally:
        stop.set()
        await task


def test_the_front_end_answers_what_one_process_answers(tmp_path):
    async def go():
        async with engine_and_front(tmp_path) as (client, _):
            remote = (await client.post("/classify", json={"model": "cb", "input": [PAIR, PAIR]})).json()
            models = (await client.get("/v1/models")).json()
        async with serving(Settings(models={"cb": FIXTURE}, dtype="float32")) as client:
            local = (await client.post("/classify", json={"model": "cb", "input": [PAIR, PAIR]})).json()
        return remote, local, models

    remote, local, models = run(go())
    assert [d["probs"] for d in remote["data"]] == [d["probs"] for d in local["data"]]
    assert remote["usage"] == local["usage"] and models["data"][0]["id"] == "cb"


class GatedRunner(SlowRunner):
    """Warm-up waits for `gate`: the engine stays loading until the test lets it finish."""

    gate: threading.Event

    def warmup(self, *args, **kwargs):
        self.gate.wait(10)
        return super().warmup(*args, **kwargs)


def test_while_the_engine_loads_the_front_end_lists_no_model_it_cannot_serve(tmp_path):
    """Issue 23 item 12: with an engine process, /v1/models said 200 with the model while /classify said
    503; now /v1/models is 503 until /ready is 200."""
    async def go():
        s = Settings(models={"cb": FIXTURE}, dtype="float32")
        runner = GatedRunner.from_export(FIXTURE, dtype="float32")
        runner.gate = threading.Event()
        socket_path = str(tmp_path / "engine.sock")
        stop = asyncio.Event()
        task = asyncio.create_task(EngineServer(s, socket_path, runners={"cb": runner}).serve(False, stop))
        try:
            async with serving(s, engine_socket=socket_path, wait_ready=False) as client:
                await asyncio.sleep(0.3)  # the front end has its tokenizer and waits for the engine
                loading = await client.get("/v1/models"), await client.post("/classify", json={"model": "cb",
                                                                                               "input": PAIR})
                runner.gate.set()
                for _ in range(200):
                    if (await client.get("/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                return loading, await client.get("/v1/models")
        finally:
            runner.gate.set()
            stop.set()
            await task

    (models, classify), ready = run(go())
    assert classify.status_code == 503 and models.status_code == 503, models.text
    assert ready.status_code == 200 and ready.json()["data"][0]["id"] == "cb"


def test_engine_refusals_reach_the_caller_as_the_same_json_with_retry_after(tmp_path):
    async def go():
        async with engine_and_front(tmp_path, delay=0.4, max_queue=4, max_inputs_per_request=4,
                                    max_batch_size=4) as (client, _):
            body = {"model": "cb", "input": [PAIR] * 4}
            return await asyncio.gather(*(client.post("/classify", json=body) for _ in range(4)))

    answers = run(go())
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 429 in codes, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.json()["error"]["type"] == "overloaded" and int(refused.headers["retry-after"]) >= 1


def test_a_drain_answers_work_still_in_the_engine_503(tmp_path):
    async def go():
        async with engine_and_front(tmp_path, delay=1.0, shutdown_grace_s=0.1) as (client, _):
            state = client.app.state.dhrd
            pending = asyncio.create_task(client.post("/classify", json={"model": "cb", "input": PAIR}))
            await asyncio.sleep(0.2)
            await state.drain()
            answer = await pending
            ready = await client.get("/ready")
            return answer, ready

    answer, ready = run(go())
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "shutting_down"
    assert ready.status_code == 503


def test_a_sigterm_to_the_engine_itself_drains_for_the_whole_grace_period(tmp_path):
    """Issue 23 item 3: SIGTERM to the process group reaches the engine as early as the front ends; its
    drain must give queued work `--shutdown-grace-s` too (it capped it at 5 s: 15 of 16 requests got 503
    with a 60 s grace). Fast stand-in for 60 s of queued work: the grace the engine's drain is given."""
    async def go():
        s = Settings(models={"cb": FIXTURE}, dtype="float32", shutdown_grace_s=60)
        engine = EngineServer(s, str(tmp_path / "engine.sock"),
                              runners={"cb": SlowRunner.from_export(FIXTURE, dtype="float32")})
        given: list[float] = []

        async def drain(grace_s: float) -> int:
            given.append(grace_s)
            return 0

        engine.core.drain = drain
        stop = asyncio.Event()
        task = asyncio.create_task(engine.serve(False, stop))
        while not engine.ready:
            await asyncio.sleep(0.05)
        stop.set()
        await task
        return given

    assert run(go()) == [60]


def test_when_the_engine_goes_away_the_front_end_says_503_not_500(tmp_path):
    async def go():
        async with engine_and_front(tmp_path) as (client, engine):
            assert (await client.get("/ready")).status_code == 200
            await engine.core.close()
            client.app.state.dhrd.client._writer.transport.abort()  # the socket breaks, as if the engine died
            await asyncio.sleep(0.1)
            return await client.get("/ready"), await client.post("/classify", json={"model": "cb", "input": PAIR})

    ready, answer = run(go())
    assert ready.status_code == 503 and "engine" in ready.json()["error"]["message"]
    assert answer.status_code == 503 and answer.json()["error"]["type"] == "shutting_down"


def test_a_request_whose_client_left_is_skipped_by_the_engine(tmp_path):
    async def go():
        SlowRunner.computed = 0
        async with engine_and_front(tmp_path, delay=0.6) as (client, engine):
            SlowRunner.computed = 0  # warm-up passes done
            first = asyncio.create_task(client.post("/classify", json={"model": "cb", "input": PAIR}))
            await asyncio.sleep(0.2)  # the first request's pass is running in the engine
            second = asyncio.create_task(client.post("/classify", json={"model": "cb", "input": [PAIR, PAIR]}))
            await asyncio.sleep(0.1)
            second.cancel()  # the client goes away while its request waits in the engine's queue
            answer = await first
            await asyncio.sleep(1.0)
            dropped = engine.metrics.dropped.labels("cb", "cancelled")._value.get()
            return answer.status_code, SlowRunner.computed, dropped

    status, computed, dropped = run(go())
    assert status == 200 and computed == 1 and dropped == 2


def test_in_the_engine_process_a_classify_runs_during_a_decode_and_a_left_decode_stops(tmp_path, tiny_export,
                                                                                     monkeypatch):
    """Issue 23, item 9 through the socket: the front end's cancel reaches the decode, and classification
    runs between its steps meanwhile (before: ~3 s behind it, and the 150 steps ran to the end)."""
    from .test_reliability import PAIR as COT_PAIR, slow_cot

    passes = slow_cot(monkeypatch, 0.02)  # the engine runs in this process here, so the patch reaches it
    s = Settings(models={"cb": tiny_export}, dtype="float32", cot=True, cot_max_new_tokens=150, max_wait_ms=5)

    async def go():
        socket_path, stop = str(tmp_path / "engine.sock"), asyncio.Event()
        task = asyncio.create_task(EngineServer(s, socket_path).serve(False, stop))
        try:
            async with serving(s, engine_socket=socket_path) as client:
                cot = asyncio.create_task(client.post("/classify/cot", json={
                    "model": "cb", "input": [COT_PAIR] * 4, "max_new_tokens": 150, "min_new_tokens": 150}))
                while len(passes) < 5:
                    await asyncio.sleep(0.01)
                started = time.monotonic()
                classify = await client.post("/classify", json={"model": "cb", "input": COT_PAIR})
                took = time.monotonic() - started
                cot.cancel()  # the client hangs up: the front end cancels its request in the engine
                try:
                    await cot
                except asyncio.CancelledError:
                    pass
                left = time.monotonic()
                await asyncio.sleep(0.3)
                return classify.status_code, took, [t for t in passes if t > left]
        finally:
            stop.set()
            await task

    status, took, after = run(go())
    assert status == 200 and took < 0.5, took
    # The step under way, and those run while the cancel crossed the socket (a loaded machine's slack);
    # before the fix, the ~145 steps left all ran.
    assert len(after) <= 5, len(after)


def test_errors_cross_the_socket_with_their_kind_field_and_headers():
    wire = ipc.error_to_wire(Overloaded("queue full", retry_after=3))
    back = ipc.error_from_wire(wire)
    assert isinstance(back, Overloaded) and http_status(back) == 429 and http_headers(back) == {"Retry-After": "3"}
    other = ipc.error_from_wire(ipc.error_to_wire(RuntimeError("boom")))
    assert type(other) is ServiceError and http_status(other) == 500 and "boom" in other.message


@pytest.mark.slow
def test_dhrd_serve_with_workers_serves_reports_every_process_and_stops_cleanly(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "dhrd", "serve", "--model", f"cb={FIXTURE}", "--port", str(port),
                             "--workers", "2", "--shutdown-grace-s", "2"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**without_omp_wait_policy(), "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        answers = [httpx.post(url + "/classify", json={"model": "cb", "input": PAIR}, timeout=10) for _ in range(8)]
        assert {a.status_code for a in answers} == {200}
        metrics = httpx.get(url + "/metrics", timeout=5).text
        engine = int(re.search(r"one engine \(pid (\d+)\)", log.read_text()).group(1))
        # the engine's idle OpenMP threads sleep instead of spinning on the front ends' cores
        assert b"OMP_WAIT_POLICY=PASSIVE\0" in Path(f"/proc/{engine}/environ").read_bytes()
        # front-end series and engine series, summed over processes by any front end
        assert re.search(r'dhrd_requests_total\{endpoint="/classify",model="cb",status="200"\} 8\.0', metrics)
        assert re.search(r'dhrd_batch_size_count\{model="cb"\} [1-8]\.0', metrics)
        assert "dhrd_ready 1.0" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "engine stopped" in text and "Traceback" not in text, text[-3000:]


def without_omp_wait_policy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}


def test_children_on_a_cpu_get_a_passive_openmp_wait_policy_unless_the_operator_chose_one():
    from service.supervisor import child_environment

    assert child_environment(Settings(), {}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert child_environment(Settings(), {"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert child_environment(Settings(device="cuda"), {}) == {}


@pytest.mark.slow
def test_if_the_engine_dies_the_supervisor_stops_the_service_and_exits_nonzero(tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "dhrd", "serve", "--model", f"cb={FIXTURE}", "--port", str(port),
                             "--workers", "1"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for _ in range(600):
            match = re.search(r"one engine \(pid (\d+)\)", log.read_text())
            if match:
                break
            time.sleep(0.1)
        assert match, log.read_text()
        os.kill(int(match.group(1)), signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "dhrd-engine exited with code -9" in log.read_text()


FAULT = '''
"""Injected into every process of the service under test: after warm-up, the forward pass fails as a
dead CUDA context does."""
import service.device.runner as runner

_warmup, _predict = runner.ModelRunner.warmup, runner.ModelRunner.predict


def warmup(self):
    _warmup(self)
    self.armed = True


def predict(self, batch):
    if getattr(self, "armed", False):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    return _predict(self, batch)


runner.ModelRunner.warmup, runner.ModelRunner.predict = warmup, predict
'''


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_fatal_device_error_stops_the_service_nonzero(tmp_path, workers):
    """The server exits DEVICE_FAILED (4), in one process and under `--workers 1` (the engine exits 4, the
    supervisor stops the rest and exits 4 too): not 3, which says the port could not be bound."""
    from service import exit_codes

    code = exit_codes.DEVICE_FAILED
    (tmp_path / "sitecustomize.py").write_text(FAULT)  # every process, spawned children included
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "dhrd", "serve", "--model", f"cb={FIXTURE}", "--port", str(port),
                             "--workers", workers, "--dtype", "float32"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(900):
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        answer = httpx.post(url + "/classify", json={"model": "cb", "input": PAIR}, timeout=30)
        assert answer.status_code == 503, answer.text
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "fatal device error" in log.read_text()


@asynccontextmanager
async def engine_and_client(tmp_path, delay: float, **settings):
    """An engine server and a bare `EngineClient` (no HTTP) in this event loop, over a real socket."""
    from service.engine.client import EngineClient

    s = Settings(models={"cb": FIXTURE}, dtype="float32", **settings)
    runner = SlowRunner.from_export(FIXTURE, dtype="float32")
    socket_path = str(tmp_path / "engine.sock")
    stop = asyncio.Event()
    engine = EngineServer(s, socket_path, runners={"cb": runner})
    task = asyncio.create_task(engine.serve(False, stop))
    client = EngineClient(socket_path)
    try:
        await client.connect()
        while not (await client.status())[0]:
            await asyncio.sleep(0.05)
        runner.delay = delay  # warm-up done
        yield client, runner
    finally:
        await client.close()
        stop.set()
        await task


def frames_of(monkeypatch) -> list[list[str]]:
    """Every frame packed from now on, as the kinds of its messages."""
    frames: list[list[str]] = []
    pack = ipc.pack

    def counting(messages):
        frames.append([m[0] for m in messages])
        return pack(messages)

    monkeypatch.setattr(ipc, "pack", counting)
    return frames


IDS = [[1, 2, 3, 4, 5]]


def test_one_frame_per_forward_pass_each_way(tmp_path, monkeypatch):
    """Eight requests submitted together go as one frame; their answers, computed in one pass, come back
    as one frame. Requests that arrive during that pass form the next pass, answered in a second frame."""
    async def go():
        async with engine_and_client(tmp_path, delay=0.3) as (client, runner):
            frames = frames_of(monkeypatch)
            first = [client.submit("cb", "classify", IDS, far()) for _ in range(8)]
            await asyncio.sleep(0.1)  # their pass runs in the engine
            second = [client.submit("cb", "classify", IDS, far()) for _ in range(3)]
            results = await asyncio.gather(*(client.wait(f, far()) for f in first + second))
            return frames, results

    frames, results = run(go())
    assert len(results) == 11 and all(len(r) == 1 for r in results)
    assert [f for f in frames if f[0] == "run"] == [["run"] * 8, ["run"] * 3]
    assert [f for f in frames if f[0] == "ok"] == [["ok"] * 8, ["ok"] * 3]


def test_the_engine_answers_a_deadline_it_cannot_meet_and_skips_cancelled_requests(tmp_path):
    from service.errors import DeadlineExceeded

    async def go():
        SlowRunner.computed = 0
        async with engine_and_client(tmp_path, delay=0.4) as (client, runner):
            SlowRunner.computed = 0
            busy = client.submit("cb", "classify", IDS, far())
            await asyncio.sleep(0.1)  # the engine's pass runs; these two wait in its queue
            late = client.submit("cb", "classify", IDS, time.monotonic() + 0.2)
            gone = client.submit("cb", "classify", IDS, far())
            await asyncio.sleep(0.05)
            client.cancel(gone)
            await client.wait(busy, far())
            with pytest.raises(DeadlineExceeded):
                await client.wait(late, far())
            await asyncio.sleep(0.5)
            return SlowRunner.computed

    assert run(go()) == 1  # only the first request cost a forward pass


def far() -> float:
    return time.monotonic() + 60
