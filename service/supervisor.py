"""`dhrd serve --workers N`: one engine process and N front-end processes, supervised.

    supervisor ─┬─ engine process     (engine/process.py: models, batching, forward passes)
                │        ▲ Unix socket, token ids (engine/ipc.py)
                └─ N front ends       (uvicorn + the app: HTTP, validation, tokenisation)
                         ▲ one listening TCP socket each, bound here on the same port (SO_REUSEPORT:
                           the kernel spreads new connections evenly over them)

The shape of vLLM's API-server processes and engine core: HTTP work scales with processes, and the
engine's forward pass never waits for a GIL held by JSON parsing. Shutdown (SIGTERM/SIGINT) goes
front ends first (each drains: /ready fails, work in flight finishes within the grace period), then
the engine. If the engine dies, the supervisor stops the front ends and exits non-zero: without
its models the replica is useless, and the orchestrator's restart reloads them. A front end that dies
is replaced on its own listening socket (it holds no state; the healthy ones keep serving), unless
front ends keep dying (`RestartBudget`), which stops the replica too. If the supervisor itself dies (kill -9, the OOM
killer, systemd's KillMode=process), its children get SIGTERM and drain as on a normal stop, and the
next start removes the runtime directory it left behind.
"""
from __future__ import annotations

import ctypes
import logging
import struct
import multiprocessing
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import wait
from pathlib import Path

from prometheus_client import multiprocess

from . import exit_codes
from .settings import Settings

log = logging.getLogger("dhrd.service")


RUNTIME_PREFIX = "dhrd-serve-"
FRONT_END_RESTARTS = 5  # front-end deaths forgiven per window; one more stops the replica (a crash loop)
FRONT_END_RESTART_WINDOW_S = 60.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """In a child: SIGTERM this process when the supervisor `parent` is gone, however it went, so that no
    orphan keeps the port and answers 200 for a service nobody supervises (and a restart can bind). The
    signal, not SIGKILL: the child drains as on a normal stop, bounded by the grace period. Linux's
    PR_SET_PDEATHSIG acts at once; a thread watching the parent's pid is the portable part, and covers a
    supervisor that died before prctl was called."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc: the thread still watches
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("the supervisor (pid %d) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dhrd-parent-watch", daemon=True).start()


def engine_main(parent: int, *args) -> None:
    """The engine process's entry point under the supervisor (engine/process.main, tied to its parent)."""
    from .engine import process as engine_process

    die_with_parent(parent)
    engine_process.main(*args)


def frontend_main(parent: int, settings: Settings, socket_path: str, sock, log_level: str,
                  replacement: bool = False, beat=None) -> None:
    """A front-end process: uvicorn with the app, on its listening socket. A `replacement` for a
    front end that died accepts connections only once it is ready: the others serve meanwhile, and a
    probe reaching it must not see the replica as unready."""
    import uvicorn

    die_with_parent(parent)

    from .http.app import create_app
    from .http.connections import uvicorn_options
    from .http.server import DrainingServer

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[front]: %(message)s")
    app = create_app(settings, hashes_checked=True, engine_socket=socket_path, ready_before_serving=replacement)
    config = uvicorn.Config(app, log_level=log_level, **uvicorn_options(settings, app),
                            timeout_graceful_shutdown=settings.grace_s + 10)
    DrainingServer(config, app, beat).run(sockets=[sock])


def child_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables the children need that the operator did not set. On a CPU, OMP_WAIT_POLICY=PASSIVE: an
    OpenMP thread of the engine that has finished its share of a forward pass otherwise spins for its next
    task, on the cores the front ends need; measured with --workers 2 on 2 cores, that tripled the engine's
    CPU per request and halved the replica's throughput (BENCHMARKS.md, "engine CPU per request")."""
    if settings.device == "cpu" and "OMP_WAIT_POLICY" not in environ:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {}


# How long a stop waits before SIGKILL: the front ends get the drain's grace period and this margin, then
# the engine this long (its queues are empty by then). DEPLOY.md's terminationGracePeriodSeconds covers both.
FRONT_END_STOP_MARGIN_S = 15
ENGINE_STOP_S = 15


def run(settings: Settings, log_level: str) -> int:
    """Bind the port, start the engine and the front ends, wait for a signal or a death, stop them in order.
    Returns the exit status (exit_codes): OK after a signal, PORT_UNAVAILABLE if the port could not be bound,
    DEVICE_FAILED if the engine died of a fatal device error, CHILD_DIED if it died otherwise or front ends
    kept dying."""
    try:
        socks = listen(settings.host, settings.port, settings.front_ends, settings.socket_per_front_end)
    except OSError as exc:
        # Before any child exists, so nothing is left behind; 3 is what uvicorn exits with in one process.
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return exit_codes.PORT_UNAVAILABLE
    stopping = stop_on_signals(socks)
    for stale in sweep_stale_runtime_dirs():
        log.info("removed %s, left by a supervisor that is gone", stale)
    tree = ProcessTree(settings, socks, log_level)
    code = exit_codes.OK
    # Whatever happens from here on (a child failing to start included), stop() stops every child: a
    # non-daemon child left running would also keep multiprocessing's exit hook joining it forever.
    try:
        tree.start()
        while not stopping and not code:
            code = tree.watch(stopping)
    finally:
        tree.stop()
    return code


def stop_on_signals(socks: list[socket.socket]) -> list[int]:
    """SIGTERM, SIGINT and SIGHUP (drained as SIGTERM, not a cut) stop the tree: the returned list gets the
    signal, and the listening sockets close at once, not when the watch loop notices: when the signal went
    to the whole process group, the front ends have closed their copies already, and a connection left in
    the backlog of ours would be reset when it closes instead of being refused now."""
    stopping: list[int] = []

    def on_signal(signum: int, _) -> None:
        stopping.append(signum)
        for sock in socks:
            sock.close()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    return stopping


class ProcessTree:
    """The engine process and the front ends, spawned with a runtime directory of their own (mode 0700: only
    this user reaches the engine's socket; the pid in its name tells a later start whose it is)."""

    def __init__(self, settings: Settings, socks: list[socket.socket], log_level: str):
        self.settings, self.socks, self.log_level = settings, socks, log_level
        self.runtime = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-"))
        self.socket_path = str(self.runtime / "engine.sock")
        self.metrics_dir = self.runtime / "metrics"
        self.metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)  # inherited by every child (spawned)
        os.environ.update(child_environment(settings, os.environ))  # read by each child's OpenMP runtime as it loads
        self.ctx = multiprocessing.get_context("spawn")
        self.engine = self.ctx.Process(target=engine_main, name="dhrd-engine",  # hashes: checked before the start
                                       args=(os.getpid(), settings, self.socket_path, log_level, False))
        # Each front end's heartbeat: CLOCK_MONOTONIC is one clock for every process of the machine (Linux).
        self.beats = [self.ctx.Value("d", 0.0, lock=False) for _ in range(settings.front_ends)]
        self.fronts = [self._front_end(i, f"dhrd-front-{i}", replacing=False) for i in range(settings.front_ends)]
        self.budget = RestartBudget(FRONT_END_RESTARTS, FRONT_END_RESTART_WINDOW_S)

    def _front_end(self, i: int, name: str, replacing: bool):
        return self.ctx.Process(target=frontend_main, name=name, args=(os.getpid(), self.settings, self.socket_path,
                                                                       self.socks[i], self.log_level, replacing,
                                                                       self.beats[i]))

    def start(self) -> None:
        for p in (self.engine, *self.fronts):
            p.start()
            log.info("%s started (pid %d)", p.name, p.pid)
        # The sockets stay open here too, for replacements: while a front end is down, the connections the
        # kernel sent to its socket wait in that socket's backlog for the replacement, rather than being refused.
        log.info("serving on http://%s:%d with %d front-end process(es) and one engine (pid %d)", self.settings.host,
                 self.settings.port, self.settings.front_ends, self.engine.pid)

    def watch(self, stopping: list[int]) -> int:
        """Wait up to 0.5 s for a child to exit; then act on what happened. Returns the exit status to stop
        with, or OK to go on."""
        wait([p.sentinel for p in (self.engine, *self.fronts)], timeout=0.5)
        if stopping:
            return exit_codes.OK  # a child that exited on the same signal is not a failure
        if self.engine.exitcode is not None:
            log.error("%s exited with code %s; stopping the service", self.engine.name, self.engine.exitcode)
            # a dead device is told apart from a crash: the orchestrator may reschedule elsewhere
            return exit_codes.DEVICE_FAILED if self.engine.exitcode == exit_codes.DEVICE_FAILED else exit_codes.CHILD_DIED
        self._kill_stuck()
        return self._replace_dead(stopping)

    def _kill_stuck(self) -> None:
        for i in stuck_front_ends(self.fronts, self.beats, self.settings.front_end_timeout_s, time.monotonic()):
            log.warning("%s (pid %d) has not run its event loop for %.1f s; killing it", self.fronts[i].name,
                        self.fronts[i].pid, time.monotonic() - self.beats[i].value)
            self.fronts[i].kill()
            self.fronts[i].join(5)
            self.socks[i] = fresh_socket(self.socks, i, self.settings)

    def _replace_dead(self, stopping: list[int]) -> int:
        for i, p in enumerate(self.fronts):
            if p.exitcode is None:
                continue
            if not self.budget.allow(time.monotonic()):
                log.error("%s exited with code %s: more than %d front-end deaths within %.0f s; stopping "
                          "the service", p.name, p.exitcode, FRONT_END_RESTARTS, FRONT_END_RESTART_WINDOW_S)
                return exit_codes.CHILD_DIED
            log.warning("%s exited with code %s; starting a new one", p.name, p.exitcode)
            # its live gauges (queue depth, readiness) would otherwise stay in every /metrics sum
            multiprocess.mark_process_dead(p.pid, str(self.metrics_dir))
            if stopping:  # the signal came meanwhile: the sockets are closed
                break
            self.beats[i].value = 0.0
            self.fronts[i] = self._front_end(i, p.name, replacing=True)
            self.fronts[i].start()
            log.info("%s started (pid %d)", self.fronts[i].name, self.fronts[i].pid)
        return exit_codes.OK

    def stop(self) -> None:
        """Front ends first (each drains within the grace period), then the engine; the runtime directory
        goes last."""
        for sock in self.socks:  # front ends close theirs as their drain starts: the port is free once they all have
            sock.close()
        _stop(self.fronts, self.settings.grace_s + FRONT_END_STOP_MARGIN_S)
        _stop([self.engine], ENGINE_STOP_S)
        shutil.rmtree(self.runtime, ignore_errors=True)


def stuck_front_ends(fronts: list, beats: list, timeout_s: float, now: float) -> list[int]:
    """The running front ends whose event loop has not ticked for `timeout_s` (one that has not started
    serving yet has not ticked at all: it is loading, not stuck)."""
    return [i for i, (p, beat) in enumerate(zip(fronts, beats))
            if p.exitcode is None and beat.value and now - beat.value > timeout_s]


def fresh_socket(socks: list[socket.socket], i: int, settings: Settings) -> socket.socket:
    """A stuck front end's socket, replaced: closing ours (its process is dead) takes it out of the port's
    SO_REUSEPORT group, so new connections go to the healthy front ends at once instead of waiting in its
    backlog; the few already in that backlog were waiting since it got stuck. The new socket is bound but
    not listening: it joins the group when the replacement's uvicorn listens on it, once ready, so no
    connection waits for a front end that is still starting. With one shared socket there is nothing to
    replace: the healthy front ends accept from it anyway."""
    if socks.count(socks[i]) > 1:
        return socks[i]
    socks[i].close()
    try:
        return reuse_port_socket(settings.host, settings.port, listening=False)
    except OSError as exc:  # the port is ours: only a foreign socket there could refuse, and then we keep serving
        log.error("cannot open a new socket on %s:%d for the replacement (%s); it shares another's", settings.host,
                  settings.port, exc)
        return next(s for j, s in enumerate(socks) if j != i)


class RestartBudget:
    """At most `restarts` within any `window_s` seconds: a front end that dies now and then is replaced,
    one that cannot stay up stops the replica (its log says why, and the orchestrator sees it)."""

    def __init__(self, restarts: int, window_s: float):
        self.restarts, self.window_s = restarts, window_s
        self.times: list[float] = []

    def allow(self, now: float) -> bool:
        self.times = [t for t in self.times if now - t < self.window_s]
        if len(self.times) >= self.restarts:
            return False
        self.times.append(now)
        return True


def listen(host: str, port: int, count: int, per_front_end: bool = True) -> list[socket.socket]:
    """One listening socket per front end, all on `host:port`, made here before anything starts. Raises
    OSError when the port is taken.

    Why not one shared socket (uvicorn's --workers, vLLM's API servers): each process's event loop takes
    every pending connection when it wakes, so a burst of new keep-alive connections (a load client, a
    proxy's pool) went nearly all to one front end and stayed there; measured on 2 cores with the forward
    pass stubbed, one front end took 9.69 s of CPU to the other's 0.02 s and the replica served 1,104
    req/s, against 1,864 with SO_REUSEPORT, where the kernel hashes each new connection to one of the
    sockets (BENCHMARKS.md).
    SO_REUSEPORT would also let a second replica bind the same port and silently share it, so the port is
    first bound without it: taken by anyone (another dhrd listening included), that fails, as before."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: old connections don't block
        probe.bind((host, port))
    reuse_port = getattr(socket, "SO_REUSEPORT", None) is not None and per_front_end  # Linux's; else one shared
    socks: list[socket.socket] = []
    try:
        for _ in range(count if reuse_port else 1):
            socks.append(reuse_port_socket(host, port) if reuse_port else plain_socket(host, port))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    if len(socks) > 1:
        steer_to_own(socks)
    return socks if len(socks) == count else socks * count


# A classic BPF program for the port's SO_REUSEPORT group (SO_ATTACH_REUSEPORT_CBPF, Linux >= 4.5): it
# returns the index of the socket that gets a new connection, `random % count`. Our sockets join the group
# first (a socket already listening on the port makes the bind check above fail), so they hold indices
# 0..count-1; a socket another process of this user adds later gets a higher index and no connection.
SO_ATTACH_REUSEPORT_CBPF = 51
_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM: the kernel's per-call random number


def steer_to_own(socks: list[socket.socket]) -> bool:
    """Attach the program to the group of `socks`; False (logged) where the platform has no such option."""
    program = [(0x20, 0, 0, _RANDOM),  # BPF_LD | BPF_W | BPF_ABS: A = random
               (0x94, 0, 0, len(socks)),  # BPF_ALU | BPF_MOD | BPF_K: A %= count
               (0x16, 0, 0, 0)]  # BPF_RET | BPF_A: the socket at index A
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))  # struct sock_fprog {len; filter*}
    try:
        socks[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
    except OSError as exc:
        log.warning("cannot keep other processes' sockets on this port out of its connections (%s): another "
                    "process of this user that binds it with SO_REUSEPORT would get a share", exc)
        return False
    return True


def plain_socket(host: str, port: int, reuse_port: bool = False, listening: bool = True) -> socket.socket:
    """A socket bound to host:port, inheritable by the front ends (spawned); listening unless told not to."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listening:
            sock.listen(2048)  # here, so connections wait in the backlog while the front ends start
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def reuse_port_socket(host: str, port: int, listening: bool = True) -> socket.socket:
    return plain_socket(host, port, reuse_port=True, listening=listening)


def sweep_stale_runtime_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the runtime directories (`<tmp>/dhrd-serve-<pid>-*`) of supervisors that are gone: a killed
    supervisor runs no clean-up. Only this user's, and only where process <pid> no longer exists, or is
    this process (a container restarted with the same pid, before this start made its own). A directory
    without a pid in its name (written before the pid was put there) is left alone: nothing says whose it
    is. Returns the directories removed."""
    removed = []
    for path in Path(root or tempfile.gettempdir()).glob(RUNTIME_PREFIX + "*"):
        match = re.fullmatch(re.escape(RUNTIME_PREFIX) + r"(\d+)-\w+", path.name)
        try:
            if not match or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _process_exists(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _stop(processes: list, timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL what is left (skipping any never started)."""
    processes = [p for p in processes if p.pid is not None]
    for p in processes:
        if p.exitcode is None:
            p.terminate()
    end = time.monotonic() + timeout
    for p in processes:
        p.join(max(0.0, end - time.monotonic()))
        if p.exitcode is None:
            log.warning("%s did not stop in %.0f s; killing it", p.name, timeout)
            p.kill()
            p.join(5)
