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
    from .connections import uvicorn_options

    config = uvicorn.Config(app, log_level=log_level, **uvicorn_options(settings),
                            timeout_graceful_shutdown=settings.grace_s + 10)
    DrainingServer(config, app).run(sockets=[sock])


def run(settings: Settings, log_level: str) -> int:
    """Start the engine and the front ends, wait for a signal or a death, stop them in order."""
    import uvicorn

    from . import engine_server

    runtime = Path(tempfile.mkdtemp(prefix="dhrd-serve-"))  # mode 0700: only this user reaches the socket
    socket_path = str(runtime / "engine.sock")
    metrics_dir = runtime / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # inherited by every child (spawned)
    ctx = multiprocessing.get_context("spawn")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: stopping.append(signum))

    engine = ctx.Process(target=engine_server.main, name="dhrd-engine",
                         args=(settings, socket_path, log_level, False))  # hashes: checked before the start
    engine.start()
    sock = uvicorn.Config(app=None, host=settings.host, port=settings.port).bind_socket()
    fronts = [ctx.Process(target=frontend_main, name=f"dhrd-front-{i}", args=(settings, socket_path, sock, log_level))
              for i in range(settings.front_ends)]
    for p in fronts:
        p.start()
    sock.close()  # the children hold it now
    log.info("serving on http://%s:%d with %d front-end process(es) and one engine (pid %d)", settings.host,
             settings.port, settings.front_ends, engine.pid)
    code = 0
    try:
        while not stopping:
            wait([p.sentinel for p in (engine, *fronts)], timeout=0.5)
            dead = [p for p in (engine, *fronts) if p.exitcode is not None]
            if dead and not stopping:
                log.error("%s exited with code %s; stopping the service", dead[0].name, dead[0].exitcode)
                code = 1
                break
    finally:
        _stop(fronts, settings.grace_s + 15)
        _stop([engine], 15)
        shutil.rmtree(runtime, ignore_errors=True)
    return code


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
