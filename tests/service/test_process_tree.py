"""`dhrd serve --workers N` as a process tree: the supervisor binds before anything starts, its children
die with it, the drain's grace holds whichever process is signalled, and a dead front end is replaced
(issue 23, items 1-5; RELIABILITY.md maps each to its test here)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from loadtest.servers import free_port

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "export-v1-cb"
PAIR = {"premise": "It rained all day.", "hypothesis": "The streets were wet."}


def serve(tmp_path: Path, port: int, *flags: str, log_name: str = "serve.log") -> tuple[subprocess.Popen, Path]:
    """`dhrd serve --workers ...` on the fixture export, in its own process group, logging to a file."""
    log = tmp_path / log_name
    cmd = [sys.executable, "-m", "dhrd", "serve", "--model", f"cb={FIXTURE}", "--port", str(port), "--dtype", "float32",
           *flags]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready (exit {proc.poll()}): {log.read_text()[-3000:]}")


def pids_of_tree(log: Path) -> dict[str, int]:
    """The children's pids, from the supervisor's log lines."""
    text = log.read_text()
    return {name: int(pid) for name, pid in re.findall(r"(dhrd-(?:engine|front-\d+)) started \(pid (\d+)\)", text)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose (its parent, the test's process, is not the one reaping it)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """Leave nothing behind, whatever the test did: SIGKILL the whole session's group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


@pytest.mark.slow
def test_a_port_that_cannot_be_bound_fails_the_whole_tree_at_once_before_the_engine_starts(tmp_path):
    """Item 1: the port is bound first; a bind error exits non-zero at once, starting no engine."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc, log = serve(tmp_path, port, "--workers", "2")
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            kill_group(proc)
    text = log.read_text()
    assert code == 3, f"exit {code}: {text[-3000:]}"
    assert "address already in use" in text.lower() and "engine" not in text.lower(), text[-3000:]


@pytest.mark.slow
def test_when_the_supervisor_is_killed_its_children_stop_and_free_the_port(tmp_path):
    """Item 2: kill -9 of the supervisor (the OOM killer, systemd's KillMode=process) left the engine and
    the front ends answering 200 as orphans; now they get SIGTERM, drain (grace 1 s here) and exit."""
    port = free_port()
    proc, log = serve(tmp_path, port, "--workers", "1", "--shutdown-grace-s", "1")
    try:
        wait_ready(proc, port, log)
        children = pids_of_tree(log)
        assert set(children) == {"dhrd-engine", "dhrd-front-0"}, log.read_text()[-3000:]
        proc.kill()
        proc.wait(5)
        end = time.monotonic() + 20
        while time.monotonic() < end and any(alive(pid) for pid in children.values()):
            time.sleep(0.1)
        left = {name: pid for name, pid in children.items() if alive(pid)}
        assert not left, f"orphans still running: {left}"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
    finally:
        kill_group(proc)
        # what the next start would sweep (test_only_runtime_directories_whose_supervisor_is_gone_are_swept)
        for left_behind in Path(tempfile.gettempdir()).glob(f"dhrd-serve-{proc.pid}-*"):
            shutil.rmtree(left_behind, ignore_errors=True)


def test_only_runtime_directories_whose_supervisor_is_gone_are_swept(tmp_path):
    """Item 2: a killed supervisor leaves its /tmp/dhrd-serve-<pid>-* behind; the next start removes it,
    and leaves alone a live supervisor's directory and any it cannot attribute to a process."""
    from service.supervisor import sweep_stale_runtime_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process (until the kernel reuses it, which takes a while)
    stale = tmp_path / f"dhrd-serve-{dead.pid}-abc123"
    live = tmp_path / f"dhrd-serve-{os.getppid()}-def456"
    unknown = tmp_path / "dhrd-serve-k2j3h4g5"  # the old naming, without a pid
    other = tmp_path / "something-else"
    for d in (stale, live, unknown, other):
        (d / "metrics").mkdir(parents=True)
    assert sweep_stale_runtime_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and unknown.exists() and other.exists()


def test_during_a_drain_open_connections_get_a_503_from_ready_and_new_ones_are_refused():
    """Item 4: the drain closed every keep-alive connection at once, so a probe saw a refused connection,
    never the 503 SERVING.md and DEPLOY.md promise. Now the listener closes (a new connection is refused: a
    proxy retries it elsewhere), but open connections are answered until the drain ends: /ready 503
    `shutting_down` with `Connection: close`, while the work in flight completes. DrainingServer is what
    the single process and every front end of `--workers` run; here it runs in this event loop."""
    import asyncio

    import uvicorn

    from service.http.app import create_app
    from service.http.server import DrainingServer
    from service.settings import Settings

    from .conftest import FakeRunner

    async def go():
        port = free_port()
        settings = Settings(models={}, shutdown_grace_s=10)
        app = create_app(settings, {"fake": FakeRunner(delay=1.5)})
        server = DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               timeout_graceful_shutdown=settings.grace_s + 10), app)
        serving = asyncio.create_task(server.serve())
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as probe, \
                httpx.AsyncClient(base_url=url, timeout=10) as worker:
            for _ in range(200):
                try:
                    if (await probe.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            in_flight = asyncio.create_task(worker.post("/classify", json={"model": "fake", "input": "yes"}))
            await asyncio.sleep(0.3)  # the forward pass (1.5 s) is running
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            await asyncio.sleep(0.3)
            try:
                during = await probe.get("/ready")  # on the probe's open keep-alive connection
            except httpx.TransportError as exc:
                during = exc
            try:
                await httpx.AsyncClient(base_url=url, timeout=2).get("/ready")
                fresh = None
            except httpx.ConnectError as exc:
                fresh = exc
            done = await in_flight
        await asyncio.wait_for(serving, 30)
        return during, fresh, done

    during, fresh, done = asyncio.run(go())
    assert isinstance(during, httpx.Response), f"the open connection was dropped: {during!r}"
    assert during.status_code == 503 and during.json()["error"]["type"] == "shutting_down", during.text
    assert during.headers.get("connection") == "close"
    assert fresh is not None, "a new connection was accepted during the drain"
    assert done.status_code == 200 and done.json()["data"][0]["label"] == "yes"


@pytest.mark.slow
def test_a_dead_front_end_is_replaced_and_the_replica_keeps_serving(tmp_path):
    """Item 5: killing one front end stopped the whole replica (and, after the grace period, cost the
    healthy front end's clients their work). Front ends hold no state, so the supervisor starts a new one
    on the dead one's listening socket; only the engine's death (the models) stops the replica."""
    port = free_port()
    proc, log = serve(tmp_path, port, "--workers", "2", "--shutdown-grace-s", "1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, port, log)
        first = pids_of_tree(log)
        os.kill(first["dhrd-front-0"], signal.SIGKILL)
        end = time.monotonic() + 30
        while time.monotonic() < end and log.read_text().count("dhrd-front-0 started") < 2 and proc.poll() is None:
            time.sleep(0.1)
        assert proc.poll() is None, f"the supervisor exited {proc.returncode}: {log.read_text()[-3000:]}"
        replacement = pids_of_tree(log)["dhrd-front-0"]  # the last pid logged under that name
        assert replacement != first["dhrd-front-0"] and alive(replacement), log.read_text()[-3000:]
        assert alive(first["dhrd-front-1"]) and alive(first["dhrd-engine"])
        # the dead front end's live gauges left the /metrics sums (prometheus_client's files per pid)
        metrics_dir = next(Path(tempfile.gettempdir()).glob(f"dhrd-serve-{proc.pid}-*")) / "metrics"
        assert not list(metrics_dir.glob(f"gauge_live*_{first['dhrd-front-0']}.db"))
        # new connections, spread by the kernel over both front ends once the new one accepts
        answers = [httpx.post(url + "/classify", json={"model": "cb", "input": PAIR}, timeout=30).status_code
                   for _ in range(8)]
        assert answers == [200] * 8, answers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        kill_group(proc)


def established_connections(pid: int, port: int) -> int:
    """How many accepted TCP connections on `port` process `pid` holds (its socket fds, matched against
    the kernel's table of established connections)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            count += local_port == port and state == "01" and inode in inodes
    return count


@pytest.mark.slow
def test_a_burst_of_keep_alive_connections_is_spread_over_the_front_ends(tmp_path):
    """With one shared listening socket, the front end that woke first took every pending connection: a
    load client's or a proxy's pool of keep-alive connections, opened at once, all went to one front end,
    which then did nearly all the work. Each front end now has a socket of its own (SO_REUSEPORT), and the
    kernel spreads new connections over them."""
    port = free_port()
    proc, log = serve(tmp_path, port, "--workers", "2")
    clients = []
    try:
        wait_ready(proc, port, log)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
        for sock in clients:  # one request on each: every connection is accepted by then
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        for sock in clients:
            assert b"200 OK" in sock.recv(65536)
        pids = pids_of_tree(log)
        held = [established_connections(pids[f"dhrd-front-{i}"], port) for i in range(2)]
        assert sum(held) == 16 and min(held) >= 2, held
        # SO_REUSEPORT must not let a second replica join the port silently: it still cannot bind
        second, second_log = serve(tmp_path, port, "--workers", "2", log_name="second.log")
        try:
            assert second.wait(timeout=60) == 3, second_log.read_text()[-3000:]
        finally:
            kill_group(second)
    finally:
        for sock in clients:
            sock.close()
        kill_group(proc)


def test_front_ends_that_keep_dying_stop_the_replica():
    """Item 5: a front end that cannot stay up (a crash loop) is not restarted forever."""
    from service.supervisor import RestartBudget

    budget = RestartBudget(restarts=3, window_s=60)
    assert [budget.allow(now) for now in (0, 1, 2, 3)] == [True, True, True, False]
    assert budget.allow(61.5)  # the first restarts have left the window


@pytest.mark.slow
def test_a_sigterm_to_the_process_group_lets_work_in_flight_finish_and_stops_every_process(tmp_path):
    """Item 3, end to end: systemd's default KillMode=control-group signals every process at once; work in
    flight completes, the supervisor exits 0 and no child is left."""
    import asyncio

    port = free_port()
    proc, log = serve(tmp_path, port, "--workers", "1", "--shutdown-grace-s", "30", "--max-batch-size", "1",
                      "--max-wait-ms", "0")
    body = {"model": "cb", "input": [PAIR] * 16}
    try:
        wait_ready(proc, port, log)
        children = pids_of_tree(log)

        async def go():
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                work = [asyncio.create_task(client.post("/classify", json=body)) for _ in range(4)]
                await asyncio.sleep(0.3)
                os.killpg(proc.pid, signal.SIGTERM)
                return [r.status_code for r in await asyncio.gather(*work)]

        assert asyncio.run(go()) == [200] * 4, log.read_text()[-3000:]
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        end = time.monotonic() + 10
        while time.monotonic() < end and any(alive(pid) for pid in children.values()):
            time.sleep(0.1)
        assert not [pid for pid in children.values() if alive(pid)]
    finally:
        kill_group(proc)


def test_each_front_end_gets_its_own_socket_on_the_port_and_one_shared_where_the_platform_cannot(monkeypatch):
    from service.supervisor import listen

    port = free_port()
    socks = listen("127.0.0.1", port, 3)
    try:
        assert len({id(s) for s in socks}) == 3 and {s.getsockname()[1] for s in socks} == {port}
    finally:
        for s in socks:
            s.close()
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    shared = listen("127.0.0.1", port, 3)
    try:
        assert len(shared) == 3 and len({id(s) for s in shared}) == 1
    finally:
        shared[0].close()


def test_a_foreign_socket_that_joins_the_port_later_gets_no_connection():
    """Issue 32, item 4: another process of the same user binding the port with SO_REUSEPORT while dhrd
    served received 17 of 60 requests. The group's steering program only picks dhrd's own sockets."""
    from service.supervisor import listen

    port = free_port()
    socks = listen("127.0.0.1", port, 2)
    foreign = socket.socket()
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    foreign.bind(("127.0.0.1", port))
    foreign.listen()
    counts = [0, 0, 0]
    try:
        for s in (*socks, foreign):
            s.setblocking(False)
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", port)):
                time.sleep(0.005)
                for j, s in enumerate((*socks, foreign)):
                    try:
                        s.accept()[0].close()
                        counts[j] += 1
                    except BlockingIOError:
                        pass
    finally:
        for s in (*socks, foreign):
            s.close()
    assert counts[2] == 0 and counts[0] > 10 and counts[1] > 10 and sum(counts) == 60, counts


def test_a_socket_already_listening_on_the_port_refuses_the_start():
    from service.supervisor import listen

    port = free_port()
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        with pytest.raises(OSError):
            listen("127.0.0.1", port, 2)
