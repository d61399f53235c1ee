"""Pure ASGI middleware: request metrics (`Observe`), the body guard (`BodyGuard`: size and read time) and
`Admission` (bearer key and the in-flight cap, decided from headers before any body is read)."""
from __future__ import annotations

import asyncio
import secrets
import time

from fastapi import HTTPException

from ..settings import Settings
from .deps import state_of
from .error_mapping import count_rejection, error_response

TRACKED_PATHS = {"/classify", "/v1/classify", "/classify/cot", "/v1/models", "/health", "/ready", "/metrics"}
MODEL_PATHS = {"/classify", "/v1/classify", "/classify/cot", "/v1/models"}
WORK_PATHS = {"/classify", "/v1/classify", "/classify/cot"}
DOC_PATHS = {"/docs", "/openapi.json"}  # Swagger UI's own assets (/swagger/...) are public files


class Observe:
    """Count requests and time them, by path, model and status. (Starlette's `@app.middleware("http")`
    wraps every response in an extra task and stream: measurable CPU per request.)"""

    def __init__(self, app):
        self.app = app
        # The labelled children, kept: `labels()` takes a lock and checks its arguments on every call.
        # Bounded keys: tracked paths, served model names (or "-") and status codes.
        self._children: dict[tuple[str, str, int], tuple] = {}
        self._metrics = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if _draining(scope):  # server.py keeps open connections during a drain: ask the client to leave
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope, status: int, seconds: float) -> None:
        path = scope["path"] if scope["path"] in TRACKED_PATHS else "other"
        state = state_of(scope.get("app"))
        if state is None or path in ("/metrics", "/health"):
            return
        model = (scope.get("state") or {}).get("model", "-")
        if state.metrics is not self._metrics:  # a new lifespan (tests run several per app)
            self._children, self._metrics = {}, state.metrics
        key = (path, model, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (state.metrics.requests.labels(path, model, str(status)),
                                              state.metrics.request_duration.labels(path, model))
        children[0].inc()
        children[1].observe(seconds)


def _draining(scope) -> bool:
    state = state_of(scope.get("app"))
    return state is not None and state.draining


class Admission:
    """Refuse early and cheaply, from the request line and headers alone: 401 without the bearer key
    (before a malformed body could earn a 422), 429 past `max_concurrent_requests` in flight."""

    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        self.in_flight = 0
        protected = set(MODEL_PATHS)
        protected |= {"/metrics"} if settings.protect_metrics else set()
        protected |= DOC_PATHS if settings.protect_docs else set()
        self.protected = protected if settings.api_key else set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in self.protected and not self._authorised(scope):
            count_rejection(scope, "unauthorized")
            response = error_response(401, "unauthorized", "missing or invalid bearer token", "Authorization",
                                      {"WWW-Authenticate": 'Bearer realm="dhrd"'})
            return await response(scope, receive, send)
        if path not in WORK_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.settings.max_concurrent_requests:
            count_rejection(scope, "overloaded")
            response = error_response(429, "overloaded", f"{self.in_flight} requests in flight, the limit is "
                                      f"{self.settings.max_concurrent_requests}; retry later", None,
                                      {"Retry-After": "1"})
            return await response(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _authorised(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        key = self.settings.api_key or ""
        return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), key.encode())


class BodyGuard:
    """413 for a body over `max_bytes` (declared or streamed), 408 for one not received within
    `timeout_s` (a client that sends half a body must not hold a request open forever)."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, "too_large", f"request body is over the limit of {self.max_bytes} bytes",
                                      field="body")
            return await response(scope, receive, send)
        seen = 0
        body_done = False
        deadline = time.monotonic() + self.timeout_s

        async def guarded_receive():
            nonlocal seen, body_done
            if body_done:  # after the body, the next message is the disconnect: wait for it as long as needed
                return await receive()
            try:
                # asyncio.timeout, not wait_for: wait_for wraps each receive in a task of its own, where a
                # timer handle is all a deadline needs.
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:  # a streamed body with no (or a false) Content-Length
                    raise HTTPException(413, f"request body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, guarded_receive, send)
