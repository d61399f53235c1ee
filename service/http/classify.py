"""What POST /classify does, whichever way a request arrives: through the FastAPI route (what /docs
describes, and the fallback) or through the fast path (fast_path.py). One function, so the two cannot drift.

The answer is built as plain JSON here rather than through pydantic's `model_construct`, whose default
factories and walk over the fields cost several times what `json.dumps` does per request;
`schemas.ClassifyResponse` stays the documented shape, and tests/service/test_fast_path.py checks an
answer against it.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from ..engine.served import InputOptions
from ..errors import ClientGone, InvalidInput, TooLarge
from ..settings import Settings
from . import schemas
from .state import AppState


async def classify_answer(state: AppState, body: schemas.ClassifyRequest, scope, receive) -> bytes:
    """The JSON body of a 200 answer to `body`; raises ServiceError (InvalidInput, Overloaded, ...) as
    the service's errors say. `scope` and `receive` are the request's ASGI pair: the model name is put in
    the scope's state for the request metrics, and a disconnect seen on `receive` cancels the work."""
    served = state.model(body.model)
    scope.setdefault("state", {})["model"] = body.model  # what `request.state.model = ...` sets
    items = request_items(body, state.settings)
    deadline = time.monotonic() + state.settings.request_timeout_s
    results = await unless_disconnected(receive, served.classify(items, input_options(body), deadline))
    tokens = sum(r.prompt_tokens for r in results)
    state.metrics.input_tokens.labels(body.model).inc(tokens)
    return json.dumps({
        "id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": body.model,
        "data": [{"index": i, "label": r.label, "probs": r.probs, "num_classes": len(r.probs), "truncated": r.truncated}
                 for i, r in enumerate(results)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }, separators=(",", ":"), ensure_ascii=False).encode()


def request_items(body: schemas.ClassifyRequest, settings: Settings) -> list:
    items = body.items()
    if not items:
        raise InvalidInput("input is empty", field="input")
    if len(items) > settings.max_inputs_per_request:
        raise TooLarge(f"{len(items)} inputs in one request; the limit is {settings.max_inputs_per_request}",
                       field="input")
    return items


def input_options(body: schemas.ClassifyRequest) -> InputOptions:
    return InputOptions(truncate=body.truncate, limit=body.truncate_prompt_tokens)


async def unless_disconnected(receive, work):
    """Run `work` in this task; if the client goes away first, cancel it (its queued sequences are then
    skipped) and raise ClientGone. One watcher task per request: the work itself is not wrapped in a
    task of its own (a task and an `asyncio.wait` per request were ~8 % of a front end's time)."""
    handler = asyncio.current_task()
    gone = asyncio.Event()
    watcher = asyncio.ensure_future(_cancel_on_disconnect(receive, handler, gone))
    try:
        return await work
    except asyncio.CancelledError:
        if not gone.is_set():
            raise  # the server is stopping this handler
        handler.uncancel()  # type: ignore[union-attr]
        raise ClientGone() from None
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(receive, handler, gone: asyncio.Event) -> None:
    """Returns when the client goes away (the body is already read, so the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    handler.cancel()
