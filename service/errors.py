"""One exception hierarchy, mapped to HTTP status codes in one place (`install_handlers`)."""
from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorDetail, ErrorResponse


class ServiceError(Exception):
    status = 500
    kind = "internal"

    def __init__(self, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.headers = headers or {}


class InvalidInput(ServiceError):
    status, kind = 422, "invalid_input"


class UnknownModel(ServiceError):
    status, kind = 404, "unknown_model"


class TooLarge(ServiceError):
    status, kind = 413, "too_large"


class Unauthorized(ServiceError):
    status, kind = 401, "unauthorized"


class Overloaded(ServiceError):
    status, kind = 429, "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after)))})


class DeadlineExceeded(ServiceError):
    status, kind = 504, "deadline_exceeded"


class NotReady(ServiceError):
    status, kind = 503, "not_ready"


class Disabled(ServiceError):
    status, kind = 404, "disabled"


def error_response(status: int, kind: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(type=kind, message=message, field=field))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


_TYPE_TAG = re.compile(r"(str|int|float|bool|dict|list|union|literal|function-\w+)(\[.*\])?", re.IGNORECASE)


def _field_path(loc: tuple) -> str:
    """`body.input.3.premise` → `input.3.premise`; drops the union-member tags pydantic adds (`str`, `list[...]`)."""
    return ".".join(str(p) for p in loc if p != "body" and not (isinstance(p, str) and _TYPE_TAG.fullmatch(p)))


def install_handlers(app: FastAPI, on_error=None) -> None:
    """Validation errors → 422 naming the field; ServiceError → its status; anything else → 500."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        field = _field_path(tuple(first.get("loc", ())))
        message = f"{field or 'body'}: {first.get('msg')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        if on_error:
            on_error(request, 422, "invalid_input")
        return error_response(422, "invalid_input", message, field or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        if on_error:
            on_error(request, exc.status_code, kind)
        return error_response(exc.status_code, kind, str(exc.detail), "body" if exc.status_code == 413 else None,
                              getattr(exc, "headers", None))

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError):
        if on_error:
            on_error(request, exc.status, exc.kind)
        return error_response(exc.status, exc.kind, exc.message, exc.field, exc.headers)
