"""uvicorn's server with a drain on SIGTERM: readiness fails, queued work finishes, the rest is answered 503."""
from __future__ import annotations

import asyncio

import uvicorn
from fastapi import FastAPI


class DrainingServer(uvicorn.Server):
    """On shutdown, start the app's drain (`AppState.drain`) while uvicorn stops accepting and waits for
    open requests; its own cut-off (`timeout_graceful_shutdown`) is set past the drain's grace period."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets=None) -> None:
        state = getattr(self.app.state, "dhrd", None)  # absent if the lifespan never started
        drain = asyncio.ensure_future(state.drain()) if state is not None else None
        await super().shutdown(sockets)
        if drain is not None and not drain.done():
            drain.cancel()
