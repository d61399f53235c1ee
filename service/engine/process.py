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
import time
from typing import Callable

from .. import exit_codes
from ..errors import DeadlineExceeded, Disabled
from ..gc_heap import GcWatch
from ..metrics import Metrics
from ..settings import Settings
from . import ipc
from .batcher import abandon, outcome
from .core import EngineCore, find_model

log = logging.getLogger("dhrd.engine")


class Request:
    """One front end's request in the engine: callbacks, not a task, wait for its sequences' futures
    (a task and an `asyncio.wait` per request were engine CPU spent on bookkeeping). It answers once:
    results or the first error when the last future is done, DeadlineExceeded at its deadline, nothing
    when the front end cancelled it (the futures are then cancelled, so the batcher skips them)."""

    def __init__(self, rid: int, futures: list[asyncio.Future], deadline: float, outbox: ipc.Outbox,
                 forget: Callable[[], object]):
        self.rid, self.futures, self.outbox, self.forget = rid, futures, outbox, forget
        self.left = len(futures)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)
        for future in futures:
            future.add_done_callback(self._one_done)

    def _one_done(self, _: asyncio.Future) -> None:
        self.left -= 1
        if self.left == 0 and not self.timer.cancelled():
            try:
                self._answer(("ok", self.rid, outcome(self.futures)))
            except Exception as exc:  # every failure is answered; the front end maps it to HTTP
                self._answer(("err", self.rid, ipc.error_to_wire(exc)))

    def _expire(self) -> None:
        abandon(self.futures)
        self._answer(("err", self.rid, ipc.error_to_wire(
            DeadlineExceeded("no result before the request deadline (request_timeout_s)"))))

    def _answer(self, message: tuple) -> None:
        self.timer.cancel()
        self.forget()
        self.outbox.put(message)

    def abandon(self) -> None:
        """The front end no longer waits (client gone, deadline there, connection closed): no answer."""
        self.timer.cancel()
        abandon(self.futures)


class EngineServer:
    def __init__(self, settings: Settings, socket_path: str, runners: dict | None = None):
        self.settings = settings
        self.runners = runners  # tests: models given instead of loaded from settings.models
        self.socket_path = socket_path
        self.metrics = Metrics()
        self.core = EngineCore(settings, self.metrics)
        self.ready = False
        self.load_error: str | None = None
        self.gc = GcWatch(self.metrics, freeze=settings.gc_freeze)
        self.connections = 0  # front ends connected now: the drain waits for them (serve)

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
        self.gc.start()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One front-end connection: submit each frame's requests to the batchers at once, answer each
        when its results are in, all answers of one forward pass in one frame (`ipc.Outbox`)."""
        outbox = ipc.Outbox(writer)
        running: dict[int, Request] = {}
        self.connections += 1
        try:
            while True:
                for kind, rid, *args in await ipc.read(reader):
                    if kind == "run":
                        self._start(outbox, running, rid, *args)
                    elif kind == "cancel" and rid in running:
                        running.pop(rid).abandon()
                    elif kind == "status":  # also the front ends' heartbeat: answered by this loop at once
                        outbox.put(("status", rid, self.ready, self.load_error,
                                    self.core.stalled(self.settings.stall_timeout_s)))
        except (ipc.ChannelClosed, asyncio.CancelledError):
            pass  # the front end stopped, or this process is stopping; its requests need no answer
        finally:
            self.connections -= 1
            for request in running.values():
                request.abandon()
            writer.close()

    def _start(self, outbox: ipc.Outbox, running: dict[int, "Request"], rid: int, model: str, kind: str,
               payloads: list, deadline: float) -> None:
        try:
            futures = self._queue(model, kind).submit(payloads, deadline)
        except Exception as exc:  # refused (overloaded, unknown model, ...): answered in this frame
            outbox.put(("err", rid, ipc.error_to_wire(exc)))
            return
        if not futures:
            outbox.put(("ok", rid, []))
            return
        running[rid] = Request(rid, futures, deadline, outbox, lambda: running.pop(rid, None))

    def _queue(self, model: str, kind: str):
        entry = find_model(self.core.models, model, self.ready, self.load_error)
        queue = entry.batcher if kind == "classify" else entry.cot_batcher
        if queue is None:
            raise Disabled("the CoT endpoint is disabled; start the service with --cot (DHRD_COT=true)")
        return queue

    async def serve(self, verify_hashes: bool, stop: asyncio.Event) -> bool:
        """Listen, load, and serve until `stop` is set (then drain briefly and close) or the device fails
        fatally (then close at once: nothing more can be computed). Returns whether the device failed."""
        server = await asyncio.start_unix_server(self.handle, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        loading = asyncio.create_task(self.load(verify_hashes))
        stopped, died = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.core.died.wait())
        await asyncio.wait({stopped, died}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel(), died.cancel()
        loading.cancel()
        # Stopped by the supervisor, the front ends are gone already and the queue is empty, so this returns
        # at once. But SIGTERM to the process group (systemd's default KillMode, `kill -TERM -PGID`) reaches
        # this process as early as the front ends: while they drain, the engine keeps taking the work they
        # still send (requests they had read before their signal), for the same grace period, and drains
        # its queues only once they have gone; refusing it here answered a few requests 503 "models are
        # still loading". A dead device drains nothing.
        grace = self.settings.grace_s
        if self.connections:
            end = time.monotonic() + grace
            while self.connections and not self.core.dead and time.monotonic() < end:
                await asyncio.sleep(0.05)
            grace = max(0.0, end - time.monotonic())
        self.ready = False
        failed = 0 if self.core.dead else await self.core.drain(grace)
        server.close()
        self.gc.close()
        await self.core.close()
        log.info("engine stopped (%d queued sequence(s) answered 503)", failed)
        return self.core.dead is not None


def main(settings: Settings, socket_path: str, log_level: str, verify_hashes: bool) -> None:
    """Process entry point (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the supervisor decides
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[engine]: %(message)s")
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        run = asyncio.run
    async def serve() -> bool:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP (a closed terminal, a group HUP) as SIGTERM
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        return await EngineServer(settings, socket_path).serve(verify_hashes, stop)

    if run(serve()):
        # The device context is dead: exit non-zero now (the supervisor then stops the service). os._exit
        # skips interpreter teardown, whose CUDA frees and thread joins could fail or hang on a dead device.
        logging.shutdown()
        os._exit(exit_codes.DEVICE_FAILED)
