"""The edge: service errors mapped to HTTP in one place (TEI's router): one status per error kind,
one JSON shape, each refusal counted once. Only the front end imports this (and the web framework)."""
from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Overloaded, ServiceError
from .deps import state_of
from .schemas import ErrorDetail, ErrorResponse

STATUS = {
    "internal": 500,
    "invalid_input": 422,
    "unknown_model": 404,
    "too_large": 413,
    "unauthorized": 401,
    "overloaded": 429,
    "deadline_exceeded": 504,
    "not_ready": 503,
    "shutting_down": 503,
    "engine_dead": 503,  # TEI's "unhealthy": a load balancer retries elsewhere while this one restarts
    "disabled": 404,
    "client_closed_request": 499,  # nginx's code; nobody reads the answer
}


def http_status(exc: ServiceError) -> int:
    return STATUS.get(exc.kind, 500)


def http_headers(exc: ServiceError) -> dict[str, str]:
    if isinstance(exc, Overloaded):
        return {"Retry-After": str(max(1, round(exc.retry_after)))}
    return {}


MAX_MESSAGE_CHARS = 500


def echo(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Caller-controlled text made safe to put in an answer: lone surrogates escaped (they cannot be
    encoded as UTF-8 JSON) and the length capped (a 100 KB model name is not worth echoing)."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= limit else safe[:limit] + f"... ({len(safe)} characters)"


def error_content(kind: str, message: str, field: str | None = None) -> dict:
    """The one error shape, `{"error": {"type", "message", "field"}}` (`schemas.ErrorResponse`), with the
    caller's text made safe to echo: every error answer is built here, whoever writes it."""
    return ErrorResponse(error=ErrorDetail(type=kind, message=echo(message), field=field and echo(field, 200))).model_dump()


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_content(kind, message, field), status_code=status, headers=headers)


_TYPE_TAG = re.compile(r"(str|int|float|bool|dict|list|union|literal|function-\w+|constrained-\w+)(\[.*\])?",
                       re.IGNORECASE)


def _field_path(loc: tuple) -> str:
    """`body.input.3.premise` → `input.3.premise`; drops the union-member tags pydantic adds (`str`, `list[...]`)."""
    return ".".join(str(p) for p in loc if p != "body" and not (isinstance(p, str) and _TYPE_TAG.fullmatch(p)))


def count_rejection(scope, kind: str) -> None:
    """The one place a refused or failed request is counted: `dhrd_rejected_requests_total{reason=kind}`.
    Takes the ASGI scope, since middleware answers before a Request exists."""
    state = state_of(scope.get("app"))
    if state is not None:
        state.metrics.rejected.labels(kind).inc()


def install_handlers(app: FastAPI) -> None:
    """Validation errors → 422 naming the field; ServiceError → its status; each counted once by kind."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        # The deepest location is the most specific: for a union, the member the value came closest to.
        first = max(errors, key=lambda e: len(e.get("loc", ())), default={"loc": (), "msg": "invalid request"})
        if first.get("type") == "json_invalid":  # its loc is ("body", <character offset>), not a field
            position = first.get("loc", ("body", "?"))[-1]
            reason = (first.get("ctx") or {}).get("error", first.get("msg"))
            count_rejection(request.scope, "invalid_input")
            return error_response(422, "invalid_input", f"body is not valid JSON (at character {position}): {reason}",
                                  "body")
        field = _field_path(tuple(first.get("loc", ())))
        message = f"{field or 'body'}: {first.get('msg')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        count_rejection(request.scope, "invalid_input")
        return error_response(422, "invalid_input", message, field or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return http_exception_response(request.scope, exc)

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        return service_error_response(request.scope, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # A bug or a failing model, not the caller's fault: a JSON 500 that does not leak internals.
        # Starlette logs the traceback after this answer is sent; the process stays up. (The fast path
        # lets such exceptions through to here as well.)
        count_rejection(request.scope, "internal")
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); the request was not "
                                               "completed and may be retried")


def http_exception_response(scope, exc: StarletteHTTPException) -> JSONResponse:
    """The framework's own refusals (and BodyGuard's 408 and 413) in the one error shape, counted."""
    if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): as malformed JSON
        count_rejection(scope, "invalid_input")
        return error_response(422, "invalid_input", f"body could not be parsed as JSON: {exc.detail}", "body")
    kind = {404: "not_found", 405: "method_not_allowed", 408: "timeout", 413: "too_large"}.get(exc.status_code,
                                                                                              "http_error")
    count_rejection(scope, kind)
    return error_response(exc.status_code, kind, str(exc.detail), "body" if exc.status_code == 413 else None,
                          getattr(exc, "headers", None))


def service_error_response(scope, exc: ServiceError) -> JSONResponse:
    count_rejection(scope, exc.kind)
    return error_response(http_status(exc), exc.kind, exc.message, exc.field, http_headers(exc))
