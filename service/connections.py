"""Connection-level guards in front of the app, inside uvicorn's HTTP protocol (httptools).

uvicorn closes a kept-alive connection idle after an answer (`timeout_keep_alive`), but a connection
that never sends a request has no timer at all, and httptools reads request headers of any size: 20
silent sockets held `--max-connections 16` shut for good, and one 100 MB header grew the process by
170 MB, neither needing the API key. This protocol adds what uvicorn lacks (checked against uvicorn
0.54's options: `timeout_keep_alive`, `limit_concurrency`, and `h11_max_incomplete_event_size`, which
only the slower h11 parser reads):

- a request's headers must arrive within `header_timeout_s` of the connection opening or of the
  previous answer: a connection that sent nothing is closed, one that sent part of its headers
  gets a JSON 408;
- request line and headers over `max_header_bytes`: JSON 431, and the connection is closed;
- past `max_connections` open connections, a request gets a JSON 503 with `Retry-After` (uvicorn's
  own `limit_concurrency` answers plain text; it is left off and this takes its place).
Every answer here closes the connection (`connection: close`), and is counted in
`dhrd_rejected_requests_total` under its error type (`timeout`, `too_large`, `overloaded`), as the app's
own refusals are.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .http_errors import count_rejection
from .settings import Settings

REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def error_bytes(status: int, kind: str, message: str, field: str | None = None,
                headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer in the service's error shape, for the protocol to write itself."""
    body = json.dumps({"error": {"type": kind, "message": message, "field": field}}).encode()
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _over_capacity(scope, receive, send) -> None:
    """The ASGI answer past `max_connections` (what uvicorn's `service_unavailable` does, as JSON); the
    protocol counts it."""
    head, _, body = error_bytes(503, "overloaded", "too many open connections; retry later",
                                headers={"retry-after": "1"}).partition(b"\r\n\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in head.split(b"\r\n")[1:]]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size limit and a JSON connection cap.
    The limits are class attributes, set by `protocol_class(settings)`."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 65536
    max_connections: int | None = None
    # Counts a refusal by its error type (the app's metrics, once its lifespan has started).
    on_refusal: Callable[[str], None] = staticmethod(lambda kind: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_headers = False  # between a request's first byte and the end of its headers
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._await_request()

    def _await_request(self) -> None:
        """No request is being served: the next one's headers are due within `header_timeout_s`."""
        self._cancel_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _refuse(self, answer: bytes | None, kind: str | None = None) -> None:
        """Close the connection, after writing `answer` (a refusal of type `kind`, counted) if given."""
        self._cancel_timer()
        self._in_headers = False
        if not self.transport.is_closing():
            if answer is not None:
                self.transport.write(answer)
                self.on_refusal(kind or "http_error")
            self.transport.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._in_headers:  # nothing of a request sent: idle, closed as a kept-alive one would be
            self._refuse(None)
        else:
            self._refuse(error_bytes(408, "timeout", f"request headers not received within "
                                                     f"{self.header_timeout_s:g} s", "headers"), "timeout")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # The parser has run its callbacks for `data`: still inside a request's headers (this request's,
        # or the next one's arriving while this one is served), count them, and stop past the limit.
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(error_bytes(431, "too_large", f"request line and headers are over the limit of "
                                                           f"{self.max_header_bytes} bytes", "headers"), "too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_timer()
        cap = self.max_connections
        if cap is not None and (len(self.connections) >= cap or len(self.tasks) >= cap):
            self.on_refusal("overloaded")
            app, self.app = self.app, _over_capacity  # this request only: the app is chosen here, once
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        queued = bool(self.pipeline)  # a pipelined request, already parsed, starts now
        super().on_response_complete()
        if not queued and not self.transport.is_closing():
            self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)


def protocol_class(settings: Settings, on_refusal: Callable[[str], None] | None = None
                   ) -> type[GuardedHttpToolsProtocol]:
    """The guarded protocol with the settings' limits, counting its refusals with `on_refusal(kind)`."""
    attributes: dict[str, Any] = {"header_timeout_s": settings.header_timeout_s,
                                  "max_header_bytes": settings.max_header_bytes,
                                  "max_connections": settings.max_connections}
    if on_refusal is not None:
        attributes["on_refusal"] = staticmethod(on_refusal)
    return type("DHRDHttpProtocol", (GuardedHttpToolsProtocol,), attributes)


def uvicorn_options(settings: Settings, app=None) -> dict[str, Any]:
    """What `uvicorn.Config` takes from the settings at the connection level (one place for every process);
    with `app`, the protocol's refusals are counted on its metrics, as its own are (http_errors)."""
    on_refusal = None if app is None else (lambda kind: count_rejection({"app": app}, kind))
    return {"http": protocol_class(settings, on_refusal), "limit_concurrency": None, "access_log": settings.access_log}
