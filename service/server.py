"""uvicorn's server with a drain on SIGTERM: readiness fails, queued work finishes, the rest is answered 503."""
from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI


class DrainingServer(uvicorn.Server):
    """On shutdown, start the app's drain (`AppState.drain`) while uvicorn stops accepting and waits for
    open requests; its own cut-off (`timeout_graceful_shutdown`) is set past the drain's grace period.
    If the in-process engine dies (a fatal device error) it stops by itself, and `engine_dead` says so:
    the caller exits non-zero, for the orchestrator to restart it."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app
        self.engine_dead = False

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's main loop asks this every 0.1 s whether to exit."""
        state = getattr(self.app.state, "dhrd", None)
        if state is not None and state.engine_dead:
            self.engine_dead = True
            return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        state = getattr(self.app.state, "dhrd", None)  # absent if the lifespan never started
        drain = asyncio.ensure_future(state.drain()) if state is not None else None
        await super().shutdown(sockets)
        if drain is not None and not drain.done():
            drain.cancel()
