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
- request line and headers (from the request's first byte through the blank line that ends them) over
  `max_header_bytes`: JSON 431, and the connection is closed. Each request is measured alone, however its
  bytes arrive (one write, a byte at a time, many pipelined requests in one read);
- past `max_connections` open connections, a request gets a JSON 503 with `Retry-After` (uvicorn's
  own `limit_concurrency` answers plain text; it is left off and this takes its place);
- a request the parser cannot read (a bad chunk size, Content-Length with Transfer-Encoding, two
  Content-Lengths, a control character in a header, an HTTP/2 preface...): JSON 400 `bad_request`
  (uvicorn's own answer is plain text).
Every answer here closes the connection (`connection: close`), after the answers already due to requests
before it on the connection, and is counted in `dhrd_rejected_requests_total` under its error type
(`timeout`, `too_large`, `overloaded`, `bad_request`), as the app's own refusals are. A connection closed while
its client may still be sending (a refusal, or the app's 413 to a `Connection: close` or HTTP/1.0 request)
shuts its write side first and reads what still comes, briefly: closing with unread bytes makes the kernel
send a reset, which can destroy the answer before the client reads it.
"""
from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Callable

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ..settings import Settings
from .error_mapping import count_rejection, error_content

REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def error_bytes(status: int, kind: str, message: str, field: str | None = None,
                headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 answer in the service's error shape, for the protocol to write itself."""
    body = json.dumps(error_content(kind, message, field)).encode()
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


_BLANK_LINES = re.compile(rb"[\r\n]*")  # what the parser skips before a request line


class _Refused(Exception):
    """Raised in a parser callback to stop the parser: nothing after a refused request is read."""


class _Transport:
    """The socket as uvicorn's protocol and its request cycles see it: its own, except that `close()` is the
    protocol's (`_close`), also when a cycle closes after a `Connection: close` or HTTP/1.0 answer."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpToolsProtocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        if not self._protocol._closing:  # the write side may be shut already
            self._transport.write(data)

    def is_closing(self) -> bool:
        return self._protocol._closing or self._transport.is_closing()

    def close(self) -> None:
        self._protocol._close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a header size limit, a JSON connection cap and JSON
    answers to malformed requests. The limits are class attributes, set by `protocol_class(settings)`."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 65536
    max_connections: int | None = None
    # How long, and how much, a closing connection still reads (and drops) from a client that is still sending:
    # enough for a client that sends its whole body before reading the answer (a 413) to read it.
    linger_s: float = 2.0
    linger_bytes: int = 16 * 1024 * 1024
    # Counts a refusal by its error type (the app's metrics, once its lifespan has started).
    on_refusal: Callable[[str], None] = staticmethod(lambda kind: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._socket = transport
        self.transport = _Transport(transport, self)  # type: ignore[assignment]
        self._closing = False  # `_close` has begun: what arrives now is dropped
        self._lost = False
        self._dropped = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[bytes, str] | None = None  # an answer waiting for the answers due before it
        self._running: RequestResponseCycle | None = None  # the request served now (`self.cycle`: the last parsed)
        self._in_headers = False  # between a request's first byte and the end of its headers
        self._in_message = False  # between a request's first byte and its end
        # Where the parser is, as offsets in the bytes received on this connection: a request's headers are
        # measured from its first byte to the blank line ending them, whichever reads carry them.
        self._received = 0
        self._read_at, self._read, self._tail = 0, b"", b"\0\0\0"  # this read, and the previous one's last bytes
        self._at = 0  # the end of what the parser callbacks have placed (a request, its headers, a chunk)
        self._head_start = 0
        self._chunk_data = False
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

    def _refuse(self, answer: bytes | None, kind: str = "http_error") -> None:
        """Read no more requests; close the connection, after writing `answer` (a refusal of type `kind`,
        counted) if given, once the answers due to the requests before it are written: they stay in order."""
        self._cancel_timer()
        self._in_headers = False
        if answer is None:
            self._close()
            return
        self._refusal = (answer, kind)
        self._answer_refusal()

    def _answer_refusal(self) -> None:
        """Write the waiting refusal and close, unless an answer before it is still due (then its end calls this)."""
        cycle = self._running
        if self._refusal is None or self.pipeline or (cycle and not (cycle.response_complete or cycle.disconnected)):
            return
        (answer, kind), self._refusal = self._refusal, None
        if not self.transport.is_closing():  # else a request before it closed the connection: never answered
            self._socket.write(answer)
            self.on_refusal(kind)
        self._close()

    def _close(self) -> None:
        """Close; if the client may still be sending (a request not read to its end), shut the write side first
        (the client reads the answer, then the end) and drop what still arrives, within the linger bounds."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        raw = self._socket
        if self._lost or raw.is_closing() or not self._in_message or not raw.can_write_eof():
            raw.close()
            return
        raw.write_eof()
        raw.resume_reading()  # flow control may have paused it, with the client's bytes waiting
        self._linger_timer = self.loop.call_later(self.linger_s, raw.close)

    def _drop(self, data: bytes) -> None:
        """Bytes after a refusal: dropped. While the refusal waits for answers due, reading stops (the client
        waits); once closing, it goes on (a close with unread bytes is a reset) up to `linger_bytes`."""
        self._dropped += len(data)
        if not self._closing:
            self._socket.pause_reading()
        elif self._dropped > self.linger_bytes:
            self._socket.close()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self._in_headers:  # nothing of a request sent: idle, closed as a kept-alive one would be
            self._refuse(None)
        else:
            self._refuse(error_bytes(408, "timeout", f"request headers not received within "
                                                     f"{self.header_timeout_s:g} s", "headers"), "timeout")

    def _headers_too_large(self) -> None:
        self._refuse(error_bytes(431, "too_large", f"request line and headers are over the limit of "
                                                   f"{self.max_header_bytes} bytes", "headers"), "too_large")

    def data_received(self, data: bytes) -> None:
        if self._closing or self._refusal is not None:
            self._drop(data)
            return
        self._unset_keepalive_if_required()
        self._read_at, self._read = self._received, data
        self._received += len(data)
        if not self._in_message:  # what came before was blank lines, or dropped after an upgrade
            self._at = self._read_at
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # as uvicorn: a websocket takes the connection, another is ignored
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Refused):
                self._malformed(str(exc))
        finally:
            self._tail, self._read = (self._tail + data[-3:])[-3:], b""
        # Headers still arriving: their bytes so far, this read's included, are measured now (memory is bounded).
        if self._in_headers and self._received - self._head_start > self.max_header_bytes:
            self._headers_too_large()

    def _malformed(self, reason: str) -> None:
        """The JSON 400. A request whose body the parser failed on (its headers were read: it is `self.cycle`) is
        not served: the 400 is its answer. Its app, if running and not answering yet, sees the client leave."""
        cycle = self.cycle
        if self._in_message and not self._in_headers and cycle is not None and not cycle.response_started:
            if self.pipeline and self.pipeline[0][0] is cycle:  # queued behind an earlier request: never starts
                self.pipeline.popleft()
            cycle.disconnected = True  # no answer of its own is due
            cycle.message_event.set()
        self._refuse(error_bytes(400, "bad_request", f"malformed HTTP request: {reason}"), "bad_request")

    def _end_of(self, needle: bytes, start: int) -> int:
        """Where the first `needle` at or after offset `start` ends: the parser has just read past it, in this read
        (or starting in the previous one's last bytes)."""
        back = len(needle) - 1
        start = max(start, self._read_at - back)
        if start < self._read_at:
            found = (self._tail[start - self._read_at:] + self._read[:back]).find(needle)
            if found != -1:
                return start + found + len(needle)
            start = self._read_at
        found = self._read.find(needle, start - self._read_at)
        return self._received if found == -1 else self._read_at + found + len(needle)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = self._in_message = True
        # The request starts past the previous one's end and the blank lines the parser skipped.
        self._head_start = self._read_at + _BLANK_LINES.match(self._read, max(0, self._at - self._read_at)).end()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_timer()
        self._at = self._end_of(b"\r\n\r\n", self._head_start)
        if self._at - self._head_start > self.max_header_bytes:  # all in this read: not measured at its end
            self._headers_too_large()
            raise _Refused  # the parser stops: the request is not served, nothing after it is read
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

    # The body's bytes move the parser's place on: the next request starts where this one ends.
    def on_body(self, body: bytes) -> None:
        self._at += len(body)
        self._chunk_data = True
        super().on_body(body)

    def on_chunk_header(self) -> None:  # the chunk's size line (extensions included) is read
        self._at = self._end_of(b"\r\n", self._at)
        self._chunk_data = False

    def on_chunk_complete(self) -> None:  # the CRLF after its data; after the last (empty) one, the trailers
        self._at = self._at + 2 if self._chunk_data else self._end_of(b"\r\n\r\n", self._at - 2)

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        queued = bool(self.pipeline)  # a pipelined request, already parsed, starts now
        super().on_response_complete()
        if self._refusal is not None:
            self._answer_refusal()
        elif not queued and not self.transport.is_closing():
            self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
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
    with `app`, the protocol's refusals are counted on its metrics, as its own are (error_mapping)."""
    on_refusal = None if app is None else (lambda kind: count_rejection({"app": app}, kind))
    return {"http": protocol_class(settings, on_refusal), "limit_concurrency": None, "access_log": settings.access_log}
