"""The engine process: one per device. It owns the models (`EngineCore`: batchers, the torch thread)
and serves front-end processes over a Unix socket (`ipc.py`). Nothing here parses HTTP, validates
JSON or tokenises: the event loop only moves token ids between sockets and batchers, so the forward
pass's thread has the GIL nearly to itself.

Started by `dhrd serve --workers N` (supervisor.py); stops on SIGTERM after draining.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from . import ipc
from .engine import EngineCore
from .errors import Disabled, NotReady, UnknownModel
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("dhrd.engine")


class EngineServer:
    def __init__(self, settings: Settings, socket_path: str, runners: dict | None = None):
        self.settings = settings
        self.runners = runners  # tests: models given instead of loaded from settings.models
        self.socket_path = socket_path
        self.metrics = Metrics()
        self.core = EngineCore(settings, self.metrics)
        self.ready = False
        self.load_error: str | None = None

    async def load(self, verify_hashes: bool) -> None:
        try:
            await self.core.load(self.runners, verify_hashes=verify_hashes)
        except Exception as exc:  # reported to the front ends, whose /ready says why
            self.load_error = f"loading failed: {exc}"
            log.exception("model loading failed")
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("engine ready: %s", ", ".join(self.core.models))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One front-end connection: run requests concurrently, answer each when its results are in."""
        running: dict[int, asyncio.Task] = {}
        try:
            while True:
                kind, rid, *args = await ipc.read(reader)
                if kind == "run":
                    task = asyncio.create_task(self._run(writer, rid, *args))
                    running[rid] = task
                    task.add_done_callback(lambda _, r=rid: running.pop(r, None))
                elif kind == "cancel" and rid in running:
                    running[rid].cancel()
                elif kind == "status":
                    writer.write(ipc.pack(("status", rid, self.ready, self.load_error)))
        except (ipc.ChannelClosed, asyncio.CancelledError):
            pass  # the front end stopped, or this process is stopping; its requests need no answer
        finally:
            for task in running.values():
                task.cancel()
            writer.close()

    async def _run(self, writer: asyncio.StreamWriter, rid: int, model: str, kind: str, payloads: list,
                   deadline: float) -> None:
        try:
            results = await self._queue(model, kind).run(payloads, deadline)
            message = ("ok", rid, results)
        except asyncio.CancelledError:
            return  # the front end cancelled it (client gone, deadline); nobody waits for an answer
        except Exception as exc:  # every failure is answered; the front end maps it to HTTP
            message = ("err", rid, ipc.error_to_wire(exc))
        if not writer.is_closing():
            writer.write(ipc.pack(message))

    def _queue(self, model: str, kind: str):
        if not self.ready:
            raise NotReady(self.load_error or "the engine is still loading its models")
        entry = self.core.models.get(model)
        if entry is None:
            raise UnknownModel(f"model {model[:64]!r} is not served; available: {sorted(self.core.models)}",
                               field="model")
        queue = entry.batcher if kind == "classify" else entry.cot_batcher
        if queue is None:
            raise Disabled("the CoT endpoint is disabled; start the service with --cot (DHRD_COT=true)")
        return queue

    async def serve(self, verify_hashes: bool, stop: asyncio.Event) -> None:
        """Listen, load, and serve until `stop` is set; then drain briefly and close."""
        server = await asyncio.start_unix_server(self.handle, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        loading = asyncio.create_task(self.load(verify_hashes))
        await stop.wait()
        # Stopped by the supervisor, the front ends are gone already and the queue is empty, so this returns
        # at once. But SIGTERM to the process group (systemd's default KillMode, `kill -TERM -PGID`) reaches
        # this process as early as the front ends: work they queued here must get the same grace period
        # they give it, or it would be answered 503 while they still wait for it.
        loading.cancel()
        failed = await self.core.drain(self.settings.grace_s)
        server.close()
        await self.core.close()
        log.info("engine stopped (%d queued sequence(s) answered 503)", failed)


def main(settings: Settings, socket_path: str, log_level: str, verify_hashes: bool) -> None:
    """Process entry point (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s")
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        run = asyncio.run
    async def serve() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await EngineServer(settings, socket_path).serve(verify_hashes, stop)

    run(serve())
