"""`dhrd serve --workers N`: one engine process and N front-end processes, supervised.

    supervisor ─┬─ engine process     (engine_server.py: models, batching, forward passes)
                │        ▲ Unix socket, token ids (ipc.py)
                └─ N front ends       (uvicorn + the app: HTTP, validation, tokenisation)
                         ▲ one listening TCP socket, bound here and shared (the kernel spreads connections)

The shape of vLLM's API-server processes and engine core: HTTP work scales with processes, and the
engine's forward pass never waits for a GIL held by JSON parsing. Shutdown (SIGTERM/SIGINT) goes
front ends first (each drains: /ready fails, work in flight finishes within the grace period), then
the engine. If any child dies, the supervisor stops the rest and exits non-zero: a half-alive
service is worse than a restart by the orchestrator.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

from .settings import Settings

log = logging.getLogger("dhrd.service")


def frontend_main(settings: Settings, socket_path: str, sock, log_level: str) -> None:
    """A front-end process: uvicorn with the app, on the shared listening socket."""
    import uvicorn

    from .app import create_app
    from .server import DrainingServer

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[front]: %(message)s")
    app = create_app(settings, hashes_checked=True, engine_socket=socket_path)
    config = uvicorn.Config(app, log_level=log_level, limit_concurrency=settings.max_connections,
                            timeout_graceful_shutdown=settings.grace_s + 10)
    DrainingServer(config, app).run(sockets=[sock])


def run(settings: Settings, log_level: str) -> int:
    """Bind the port, start the engine and the front ends, wait for a signal or a death, stop them in order.
    Returns the exit status: 0 after a signal, 1 if a child died, 3 if the port could not be bound."""
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        # Before any child exists, so nothing is left behind; 3 is what uvicorn exits with in one process.
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return 3
    from . import engine_server

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: stopping.append(signum))
    runtime = Path(tempfile.mkdtemp(prefix="dhrd-serve-"))  # mode 0700: only this user reaches the socket
    socket_path = str(runtime / "engine.sock")
    metrics_dir = runtime / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # inherited by every child (spawned)
    ctx = multiprocessing.get_context("spawn")
    engine = ctx.Process(target=engine_server.main, name="dhrd-engine",
                         args=(settings, socket_path, log_level, False))  # hashes: checked before the start
    fronts = [ctx.Process(target=frontend_main, name=f"dhrd-front-{i}", args=(settings, socket_path, sock, log_level))
              for i in range(settings.front_ends)]
    code = 0
    # Whatever happens from here on (a child failing to start included), the finally stops every child:
    # a non-daemon child left running would also keep multiprocessing's exit hook joining it forever.
    try:
        for p in (engine, *fronts):
            p.start()
            log.info("%s started (pid %d)", p.name, p.pid)
        sock.close()  # the children hold it now
        log.info("serving on http://%s:%d with %d front-end process(es) and one engine (pid %d)", settings.host,
                 settings.port, settings.front_ends, engine.pid)
        while not stopping:
            wait([p.sentinel for p in (engine, *fronts)], timeout=0.5)
            dead = [p for p in (engine, *fronts) if p.exitcode is not None]
            if dead and not stopping:
                log.error("%s exited with code %s; stopping the service", dead[0].name, dead[0].exitcode)
                code = 1
                break
    finally:
        sock.close()
        _stop([p for p in fronts if p.pid is not None], settings.grace_s + 15)
        _stop([engine] if engine.pid is not None else [], 15)
        shutil.rmtree(runtime, ignore_errors=True)
    return code


def bind(host: str, port: int) -> socket.socket:
    """The listening socket the front ends share, bound here before anything starts (as uvicorn binds it:
    SO_REUSEADDR, so a restart is not refused by the old process's closing connections). Raises OSError."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _stop(processes: list, timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL what is left."""
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
