"""A replica that stalls must serve again, and readiness must tell the truth while it is stuck (issue 32,
items 1-3): a paused serving process, a paused engine, a paused front end. Real `dhrd serve` process trees
on the fixture export, stopped with SIGSTOP and resumed with SIGCONT."""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager

import httpx
import pytest

from loadtest.servers import free_port

from .test_process_tree import PAIR, kill_group, pids_of_tree, serve, wait_ready


@contextmanager
def served_tree(tmp_path, *flags: str):
    """`dhrd serve` on the fixture export with `flags`, ready: (process, log, base URL); whatever the test
    did, nothing is left running afterwards."""
    port = free_port()
    proc, log = serve(tmp_path, port, *flags)
    try:
        wait_ready(proc, port, log)
        yield proc, log, f"http://127.0.0.1:{port}"
    finally:
        kill_group(proc)


def poll_ready(url: str, want: int, timeout: float, path: str = "/ready") -> httpx.Response | None:
    """GET `path` until it answers `want`; that answer, or None if it never did."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            answer = httpx.get(url + path, timeout=1)
            if answer.status_code == want:
                return answer
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return None


class Clients:
    """`n` threads posting /classify back to back, each on its own connection, recording status codes."""

    def __init__(self, url: str, n: int = 4):
        self.url, self.codes, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._post, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _post(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    self.codes.append(client.post("/classify", json={"model": "cb", "input": PAIR}).status_code)
                except httpx.HTTPError:
                    self.codes.append(0)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


@pytest.mark.slow
def test_a_replica_paused_for_several_request_timeouts_serves_again(tmp_path):
    """Item 1: one forward pass spanning a 6 s pause (6x --request-timeout-s) pushed the batcher's pass-time
    estimate past every deadline; every request was then answered 504 forever while /ready said 200."""
    with served_tree(tmp_path, "--request-timeout-s", "1") as (proc, log, url):
        clients = Clients(url)
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(6)
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(3)
        clients.codes.clear()
        time.sleep(3)
        clients.close()
        after = clients.codes
        assert after and after.count(200) >= 0.9 * len(after), f"{len(after)} answers, {after.count(200)} 200s"
        assert poll_ready(url, 200, 5) is not None


@pytest.mark.slow
def test_a_stopped_engine_turns_ready_503_and_a_resumed_one_ready_again(tmp_path):
    """Item 2: with the engine process stopped, /ready answered 200 every second while every request got
    504; the front ends asked the engine its status only at start-up. Now a heartbeat bounds the silence."""
    with served_tree(tmp_path, "--workers", "2", "--stall-timeout-s", "1.5") as (proc, log, url):
        engine = pids_of_tree(log)["dhrd-engine"]
        os.kill(engine, signal.SIGSTOP)
        try:
            stuck = poll_ready(url, 503, 8)
            dead = poll_ready(url, 503, 12, path="/health")  # liveness: after 3 stall timeouts
        finally:
            os.kill(engine, signal.SIGCONT)
        assert stuck is not None, "/ready stayed 200 with the engine stopped"
        error = stuck.json()["error"]
        assert error["type"] == "not_ready" and "engine process has not answered" in error["message"], error
        assert dead is not None and dead.json()["error"]["type"] == "engine_dead", "/health stayed 200"
        assert poll_ready(url, 200, 8) is not None, "/ready did not recover once the engine resumed"
        assert poll_ready(url, 200, 8, path="/health") is not None
        answer = httpx.post(url + "/classify", json={"model": "cb", "input": PAIR}, timeout=10)
        assert answer.status_code == 200, answer.text


def new_connection_requests(url: str, seconds: float, timeout: float = 3.0) -> list[int]:
    """/classify on a new connection each time, for `seconds`: status codes, 0 for a timeout or error."""
    codes, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            codes.append(httpx.post(url + "/classify", json={"model": "cb", "input": PAIR}, timeout=timeout).status_code)
        except httpx.HTTPError:
            codes.append(0)
    return codes


@pytest.mark.slow
def test_a_stuck_front_end_is_replaced_and_stops_swallowing_new_connections(tmp_path):
    """Item 3: with one listening socket per front end, a front end whose event loop stopped kept getting
    its share of new connections and answered none (12 of 20 requests timed out). The supervisor now
    kills a front end that has not ticked for --front-end-timeout-s and takes its socket out of the port's
    group, so new connections go to the healthy one; the replacement joins once it is ready."""
    with served_tree(tmp_path, "--workers", "2", "--front-end-timeout-s", "1") as (proc, log, url):
        stuck = pids_of_tree(log)["dhrd-front-0"]
        os.kill(stuck, signal.SIGSTOP)
        end = time.monotonic() + 10
        while time.monotonic() < end and "has not run its event loop" not in log.read_text():
            time.sleep(0.1)
        assert "has not run its event loop" in log.read_text(), log.read_text()[-3000:]
        codes = new_connection_requests(url, 6)
        assert codes.count(200) == len(codes) >= 5, codes
        end = time.monotonic() + 60
        while time.monotonic() < end and pids_of_tree(log)["dhrd-front-0"] == stuck:
            time.sleep(0.2)
        assert pids_of_tree(log)["dhrd-front-0"] != stuck
        assert new_connection_requests(url, 3).count(0) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_a_sigterm_to_the_process_group_answers_200_or_shutting_down_never_not_ready(tmp_path):
    """Item 9: the engine marked itself not ready as its signal came, so requests its front ends had read
    before theirs were answered 503 `not_ready` ("models are still loading"). Now it keeps computing what
    the front ends send until they have gone (within the grace period)."""
    with served_tree(tmp_path, "--workers", "2", "--shutdown-grace-s", "10") as (proc, log, url):
        kinds: list[str] = []

        def post() -> None:
            with httpx.Client(base_url=url, timeout=15) as client:
                while True:
                    try:
                        answer = client.post("/classify", json={"model": "cb", "input": [PAIR] * 4})
                    except httpx.HTTPError:
                        return  # the connection closed: the drain is over for this client
                    kinds.append("ok" if answer.status_code == 200 else answer.json()["error"]["type"])
                    if answer.status_code != 200:
                        return

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        os.killpg(proc.pid, signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert kinds.count("ok") > 6 and set(kinds) <= {"ok", "shutting_down"}, kinds


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_sighup_drains_like_a_sigterm(tmp_path, workers):
    """Item 10: SIGHUP to the process group (a closed terminal) cut every request in flight and left the
    runtime directory behind. It is now handled as SIGTERM: work in flight finishes, the service exits."""
    import asyncio
    import tempfile
    from pathlib import Path

    with served_tree(tmp_path, "--workers", workers, "--shutdown-grace-s", "30", "--max-batch-size", "1",
                      "--max-wait-ms", "0") as (proc, log, url):

        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                work = [asyncio.create_task(client.post("/classify", json={"model": "cb", "input": [PAIR] * 16}))
                        for _ in range(3)]
                await asyncio.sleep(0.3)
                os.killpg(proc.pid, signal.SIGHUP)
                return [r.status_code for r in await asyncio.gather(*work)]

        assert asyncio.run(go()) == [200] * 3, log.read_text()[-3000:]
        assert proc.wait(timeout=60) in (0, -signal.SIGHUP), log.read_text()[-3000:]
        assert not list(Path(tempfile.gettempdir()).glob(f"dhrd-serve-{proc.pid}-*"))
