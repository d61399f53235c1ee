"""`Annotated` dependencies over `app.state`, and the bearer scheme the OpenAPI document declares."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from .state import AppState

# auto_error=False: documentation only; `middleware.Admission` enforces the key before any parsing.
BEARER = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>` when the service has an api_key")


async def get_state(request: Request) -> AppState:
    # async: a plain `def` dependency would be run in FastAPI's thread pool on every request.
    return request.app.state.dhrd


StateDep = Annotated[AppState, Depends(get_state)]


def state_of(app) -> AppState | None:
    """The lifespan's state of an ASGI app (`app.state.dhrd`), or None before the lifespan has started: the
    one lookup for code that holds only the scope's app (middleware, the fast path, error counting)."""
    return getattr(getattr(app, "state", None), "dhrd", None)
