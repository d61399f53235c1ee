"""`FastClassify`: POST /classify (and /v1/classify) answered by a plain ASGI handler when its body is a
valid request; everything else goes on to the FastAPI route, which answers exactly as before.

Why: FastAPI's request machinery (routing, dependency solving, its exception, body-limit and telemetry
middleware, the Request object, `model_construct` for the answer) cost ~430 µs of CPU per request on
the 2-core VM, more than the work itself (~225 µs: tokenising and the queue round trip; measured by
`python -m loadtest.frontend asgi`, BENCHMARKS.md). A front end's CPU per request is what caps HTTP
throughput where the forward pass is cheap: four front ends at ~660 µs each serve at most ~6,000 req/s,
near the GPU target itself. TEI's router and vLLM's API server likewise keep
the hot endpoint's path short.

Behaviour is the same by construction, not by imitation:
- the work and the answer are `classify.classify_answer`, which the FastAPI route calls too;
- a body that does not validate is handed to FastAPI (the bytes already read are replayed), so its 422
  names the field exactly as it always did; so is a content type other than JSON;
- a service error or a body-guard refusal becomes the same JSON as FastAPI's handlers give (error_mapping);
  any other exception propagates to Starlette's outermost middleware, which logs it and answers the
  JSON 500 (the app's `Exception` handler), as for the route.
Admission, the body guard and the request metrics sit outside this handler and see every request.
"""
from __future__ import annotations

from collections import deque

from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..errors import ServiceError
from .classify import classify_answer
from .deps import state_of
from .error_mapping import http_exception_response, service_error_response
from .schemas import ClassifyRequest

PATHS = frozenset({"/classify", "/v1/classify"})
JSON_HEADERS = [(b"content-type", b"application/json")]


class FastClassify:
    """Pure ASGI middleware, innermost of the app's own (app.py)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        # The cheap checks first: every other request passes through here too.
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            return await self.app(scope, receive, send)
        state = state_of(scope.get("app"))  # None until the lifespan starts
        if state is None or not _json_body(scope):
            return await self.app(scope, receive, send)
        try:
            messages = await _read_body(receive)
        except HTTPException as exc:  # the body guard: too large (413) or too slow (408)
            return await http_exception_response(scope, exc)(scope, receive, send)
        if messages[-1]["type"] != "http.request":  # the client left mid-body: FastAPI's way, as before
            return await self.app(scope, _replay(messages, receive), send)
        body = b"".join(m.get("body", b"") for m in messages)
        try:
            request = ClassifyRequest.model_validate_json(body)
        except ValidationError:  # FastAPI parses it again and names the field in its 422
            return await self.app(scope, _replay(messages, receive), send)
        try:
            answer = await classify_answer(state, request, scope, receive)
        except ServiceError as exc:
            return await service_error_response(scope, exc)(scope, receive, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*JSON_HEADERS, (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


async def _read_body(receive) -> list[dict]:
    """The request's messages up to the body's last one, or up to a disconnect."""
    messages = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _json_body(scope) -> bool:
    """Content type application/json (any case, any parameters). Anything else keeps FastAPI's own handling:
    `+json` subtypes and text types, and a body without a content type, which FastAPI (strict content type,
    its default) refuses with a 422: one rule for both ways in, tested in tests/service/test_fast_path.py."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _replay(messages: list, receive):
    """A `receive` that gives the messages already read again, then the client's next ones."""
    pending = deque(messages)

    async def replayed():
        return pending.popleft() if pending else await receive()

    return replayed
