"""The local channel between front-end processes and the engine process: length-prefixed pickled
messages over a Unix socket, and service errors as plain tuples on the wire (no HTTP: the engine
process never imports the web framework).

Why pickle: both ends are this package, the socket lives in a directory only the service's user can
open (mode 0700, made by `dhrd serve`), and pickling a list of token id lists is the cheapest encoding
Python has. Why a Unix socket and asyncio streams rather than ZeroMQ: no new dependency, and one
connection per front end keeps ordering and back-pressure simple.

Frames, not messages, are the unit on the wire: a frame is a list of messages, and each side sends at
most one frame per event-loop turn (`Outbox`): a front end's concurrent handlers share one frame, and
the engine answers every request a forward pass finished in one frame per front end (vLLM's engine
core sends one output batch per step, not one message per request).

Messages (tuples; the first element names the kind):
  front end → engine: ("run", rid, model, kind, payloads, deadline)  kind "classify" | "cot"
                      ("cancel", rid)
                      ("status", rid)
  engine → front end: ("ok", rid, results) · ("err", rid, wire_error) · ("status", rid, ready, load_error, stalled: why a model is stuck or None)
`deadline` is time.monotonic(): one clock for every process on the host.
"""
from __future__ import annotations

import asyncio
import pickle
import struct

from ..errors import ServiceError, error_class

HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a corrupt length must not make a reader allocate without bound


class ChannelClosed(ConnectionError):
    """The other end of the channel went away."""


def pack(messages: list[tuple]) -> bytes:
    """One frame: a length prefix, then the pickled list of messages."""
    body = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> list[tuple]:
    """The next frame's messages; raises ChannelClosed at end of stream."""
    try:
        (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        if size > MAX_MESSAGE_BYTES:
            raise ChannelClosed(f"frame of {size} bytes announced; the channel is corrupt")
        return pickle.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc) or "channel closed") from exc


class Outbox:
    """Messages for one peer, written as one frame at the end of the current event-loop turn.

    The first `put` of a turn schedules the flush with `call_soon`, which runs after every callback
    already scheduled: in the engine, the done-callbacks a finished forward pass set off all run before
    it, so one pass is one frame per front end; in a front end, handlers that submit in the same turn
    share a frame. One pickle and one write per frame instead of per request is the saving.
    """

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self._messages: list[tuple] = []

    def put(self, message: tuple) -> None:
        if not self._messages:
            asyncio.get_running_loop().call_soon(self.flush)
        self._messages.append(message)

    def flush(self) -> None:
        messages, self._messages = self._messages, []
        if messages and not self.writer.is_closing():
            self.writer.write(pack(messages))


def error_to_wire(exc: BaseException) -> tuple[str, str, str | None, float | None]:
    """A service error as (kind, message, field, retry_after); anything else as an internal error."""
    if isinstance(exc, ServiceError):
        return exc.kind, exc.message, exc.field, getattr(exc, "retry_after", None)
    return "internal", f"the forward pass failed: {type(exc).__name__}: {exc}", None, None


def error_from_wire(wire: tuple[str, str, str | None, float | None]) -> ServiceError:
    kind, message, field, retry_after = wire
    cls = error_class(kind)
    exc = cls.__new__(cls)
    ServiceError.__init__(exc, message, field)  # subclasses' own __init__ only shape these
    if retry_after is not None:
        exc.retry_after = retry_after  # type: ignore[attr-defined]
    return exc


