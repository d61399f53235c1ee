"""uvicorn's server with a drain on SIGTERM: readiness fails, queued work finishes, the rest is answered 503."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time

import uvicorn
from fastapi import FastAPI

from .deps import state_of


class DrainingServer(uvicorn.Server):
    """On shutdown, stop accepting and start the app's drain (`AppState.drain`); answer the connections
    already open until the drain ends, then let uvicorn close them and wait for open requests. Its own
    cut-off (`timeout_graceful_shutdown`, set past the drain's grace period) still counts from the signal.
    If the in-process engine dies (a fatal device error) it stops by itself, and `engine_dead` says so:
    the caller exits non-zero, for the orchestrator to restart it."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, beat=None):
        super().__init__(config)
        self.app = app
        self.engine_dead = False
        self.beat = beat  # a shared double (multiprocessing.Value): when this loop last ticked, for the supervisor

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's SIGINT and SIGTERM handling, and SIGHUP handled as SIGTERM: a terminal closing or a
        group SIGHUP otherwise cut every request in flight and left the runtime directory behind."""
        if threading.current_thread() is not threading.main_thread():  # as uvicorn: only the main thread may
            with super().capture_signals():
                yield
            return
        previous = signal.signal(signal.SIGHUP, self.handle_exit)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's main loop asks this every 0.1 s whether to exit; each tick is also the heartbeat the
        supervisor watches (a loop that stops ticking is stuck: `supervisor.stuck_front_ends`)."""
        if self.beat is not None:
            self.beat.value = time.monotonic()
        state = state_of(self.app)
        if state is not None and state.engine_dead:
            self.engine_dead = True
            return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        state = state_of(self.app)  # absent if the lifespan never started
        if state is None:
            return await super().shutdown(sockets)
        started = time.monotonic()
        drain = asyncio.ensure_future(state.drain())
        # A new connection is refused from now on (a proxy retries a refused connection elsewhere; it
        # would not retry a 503). uvicorn alone would also close idle keep-alive connections at once, so a
        # probe or client on one saw the connection drop, never the 503 we promise: they stay open while
        # the drain runs, where /ready and new work answer 503 `shutting_down` with `Connection: close`
        # (middleware.Observe) and the work in flight completes.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        while not drain.done() and not self.force_exit:  # force_exit: a second Ctrl-C
            await asyncio.wait([drain], timeout=0.1)
        cut_off = self.config.timeout_graceful_shutdown
        if cut_off is not None:
            self.config.timeout_graceful_shutdown = max(0.0, cut_off - (time.monotonic() - started))
        await super().shutdown(sockets)
        if not drain.done():
            drain.cancel()
