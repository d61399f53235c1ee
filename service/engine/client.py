"""The front end's side of the engine process: one connection (`EngineClient`) and, per model and
kind, a `RemoteQueue` with the same interface as an in-process `Batcher` (admit, run, drain, stop).

The engine does the real admission (its queue, its deadline estimate) and answers with the same
errors an in-process batcher raises; they cross the socket as `(kind, message, field, headers)`.
A request whose caller goes away (client disconnect, deadline) is cancelled in the engine too, so
its sequences are skipped before they cost a forward pass.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Sequence, Sized

from ..errors import DeadlineExceeded, ServiceError, ShuttingDown, TooLarge
from . import ipc

log = logging.getLogger("dhrd.service")

# How long past a request's deadline the front end waits for the engine's own answer (the engine
# answers a 504 itself at the deadline; this only covers an engine that stopped answering).
DEADLINE_SLACK_S = 2.0


class EngineUnavailable(ShuttingDown):
    """The engine process is gone (503: a load balancer retries elsewhere, the supervisor restarts)."""


class EngineClient:
    def __init__(self, socket_path: str | Path, heartbeat_s: float = 1.0):
        self.socket_path = str(socket_path)
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: ipc.Outbox | None = None
        self._reader_task: asyncio.Task | None = None
        self._heartbeat_task: asyncio.Task | None = None
        self.heartbeat_s = heartbeat_s
        self.alive = False
        # A connected engine can still be stuck (SIGSTOP, a blocked event loop): when it last sent anything,
        # and what its last heartbeat answer said about its own models (a stall, or None).
        self.heard = time.monotonic()
        self.engine_stalled: tuple[str, float] | None = None

    async def connect(self, timeout: float = 120.0) -> None:
        """Connect, retrying while the engine process starts (its socket appears once it listens)."""
        end = time.monotonic() + timeout
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > end:
                    raise EngineUnavailable(f"no engine listening at {self.socket_path} after {timeout:.0f} s")
                await asyncio.sleep(0.05)
        self.alive = True
        self.heard = time.monotonic()
        self._outbox = ipc.Outbox(self._writer)  # concurrent handlers' requests share one frame
        self._reader_task = asyncio.create_task(self._read(reader), name="engine-reader")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="engine-heartbeat")

    def silent_for(self) -> float:
        """Seconds since the engine last sent anything; the heartbeat makes a live engine speak each second."""
        return time.monotonic() - self.heard

    async def _heartbeat(self) -> None:
        """Ask the engine its status every `heartbeat_s`, so a stuck engine is noticed even with no traffic
        (the answer also says whether one of its models is stuck: `engine_stalled`). Not awaited with a
        timeout: `silent_for` is the bound, read by readiness."""
        while self.alive:
            await asyncio.sleep(self.heartbeat_s)
            if self.alive:
                status = self._send(("status",))
                status.add_done_callback(self._heard_status)

    def _heard_status(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.engine_stalled = future.result()[2]

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                messages = await ipc.read(reader)  # one frame: what one forward pass finished
                self.heard = time.monotonic()
                for message in messages:
                    self._resolve(*message)
        except ipc.ChannelClosed:
            log.error("the engine process closed its socket; answering 503 until restarted")
        finally:
            self.alive = False
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(EngineUnavailable("the engine process is gone; retry on another replica"))
            self._pending.clear()

    def _resolve(self, kind: str, rid: int, *rest) -> None:
        future = self._pending.pop(rid, None)
        if future is None or future.done():
            return  # cancelled here already
        if kind == "err":
            future.set_exception(ipc.error_from_wire(rest[0]))
        else:
            future.set_result(rest[0] if kind == "ok" else tuple(rest))

    def _send(self, message: tuple) -> asyncio.Future:
        if not self.alive or self._outbox is None:
            raise EngineUnavailable("the engine process is not reachable; retry on another replica")
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self._outbox.put((message[0], rid, *message[1:]))
        future.rid = rid  # type: ignore[attr-defined]
        return future

    async def status(self) -> tuple[bool, str | None]:
        """(ready, load_error) of the engine."""
        ready, error, self.engine_stalled = await self._send(("status",))
        return ready, error

    def submit(self, model: str, kind: str, payloads: Sequence[Sized], deadline: float) -> asyncio.Future:
        return self._send(("run", model, kind, list(payloads), deadline))

    async def wait(self, future: asyncio.Future, deadline: float) -> list[Any]:
        """The engine's results for a submitted request; a 504 if it does not answer by the deadline."""
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()) + DEADLINE_SLACK_S)
        except asyncio.TimeoutError:
            self.cancel(future)
            raise DeadlineExceeded("no answer from the engine before the request deadline") from None
        except asyncio.CancelledError:  # the client went away, or the front end is stopping
            self.cancel(future)
            raise

    def cancel(self, future: asyncio.Future, error: ServiceError | None = None) -> None:
        """Stop waiting for a request, and tell the engine to skip its sequences."""
        rid = getattr(future, "rid", None)
        if self._pending.pop(rid, None) is not None and self.alive and self._outbox is not None:
            self._outbox.put(("cancel", rid))
        if not future.done():
            if error is None:
                future.cancel()
            else:
                future.set_exception(error)
                future.exception()  # retrieved: nobody else may

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for task in (self._heartbeat_task, self._reader_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass


class RemoteQueue:
    """One model's queue (classification or CoT) in the engine process, as the handlers see it."""

    def __init__(self, client: EngineClient, model: str, kind: str, max_queue: int):
        self.client, self.model, self.kind, self.max_queue = client, model, kind, max_queue
        self.name = model if kind == "classify" else f"{model}:{kind}"
        self._inflight: set[asyncio.Future] = set()
        self._closed = False

    def admit(self, n: int, deadline: float) -> None:
        """The checks this process can make before tokenising; the engine checks its queue itself."""
        if self._closed:
            raise ShuttingDown(f"model {self.name!r} is shutting down; retry on another replica")
        if not self.client.alive:
            raise EngineUnavailable("the engine process is not reachable; retry on another replica")
        if n > self.max_queue:
            raise TooLarge(f"{n} inputs can never fit model {self.name!r}'s queue of {self.max_queue} "
                           "sequences; send fewer per request", field="input")

    async def run(self, sequences: Sequence[Sized], deadline: float) -> list[Any]:
        future = self.client.submit(self.model, self.kind, sequences, deadline)
        self._inflight.add(future)
        try:
            return await self.client.wait(future, deadline)
        finally:
            self._inflight.discard(future)

    async def drain(self, grace_s: float) -> int:
        """Refuse new work; let requests in flight finish for `grace_s`; answer the rest 503 (and cancel
        them in the engine). Returns how many requests were cut off."""
        self._closed = True
        end = time.monotonic() + grace_s
        while self._inflight and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return self._fail_inflight(ShuttingDown("the service is shutting down and could not compute this request "
                                                "within its grace period; retry on another replica"))

    async def stop(self) -> None:
        self._closed = True
        self._fail_inflight(ShuttingDown("the service stopped before this request was computed"))

    def _fail_inflight(self, error: ServiceError) -> int:
        left = [f for f in self._inflight if not f.done()]
        for future in left:
            self.client.cancel(future, error)
        return len(left)
