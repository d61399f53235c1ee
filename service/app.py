"""`create_app(settings)`: the FastAPI app. The lifespan owns models, batchers and metrics; routes stay thin."""
from __future__ import annotations

import asyncio
import secrets
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import schemas
from .errors import DeadlineExceeded, InvalidInput, ServiceError, TooLarge, Unauthorized, install_handlers
from .metrics import Metrics
from .runner import ModelRunner
from .settings import Settings
from .state import AppState, ServedModel

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (401, 404, 413, 422, 429, 503, 504)}
TRACKED_PATHS = {"/classify", "/v1/classify", "/classify/cot", "/v1/models", "/health", "/ready", "/metrics"}


def get_state(request: Request) -> AppState:
    return request.app.state.dhrd


StateDep = Annotated[AppState, Depends(get_state)]


def require_auth(request: Request, state: StateDep) -> None:
    key = state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("missing or invalid bearer token", field="Authorization")


AuthDep = Annotated[None, Depends(require_auth)]


def create_app(settings: Settings, runners: dict[str, ModelRunner] | None = None) -> FastAPI:
    """Build the app. `runners` (tests) are served in addition to / instead of loading `settings.models`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState(settings, Metrics())
        app.state.dhrd = state
        # Load in the background so /health and /ready answer (503) while models load and warm up.
        loading = asyncio.create_task(state.load(runners))
        yield
        loading.cancel()
        await state.close()

    app = FastAPI(title="DHRD classifier service", version="0.1.0", lifespan=lifespan,
                  description="Pooled classifiers trained with Dual-Head Reasoning Distillation. "
                              "POST /classify speaks vLLM's classification API.")
    install_handlers(app, on_error=lambda request, status, kind: _count_rejection(request, status, kind))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # type: ignore[arg-type]
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    app.add_middleware(Observe)  # type: ignore[arg-type]

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every model loaded and warm (503 before)",
             responses={503: {"model": schemas.ErrorResponse}})
    async def ready(state: StateDep):
        if not state.ready:
            from .errors import error_response

            return error_response(503, "not_ready", state.load_error or "models are loading")
        return {"status": "ready", "models": sorted(state.models)}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(state: StateDep) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=schemas.ModelList, responses=ERROR_RESPONSES)
    async def models(state: StateDep, _: AuthDep) -> schemas.ModelList:
        return schemas.ModelList(data=[_card(name, s) for name, s in sorted(state.models.items())])

    @app.post("/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES,
              summary="Classify text(s) or task field object(s) with the pooled head")
    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES,
              include_in_schema=False)
    async def classify(body: schemas.ClassifyRequest, request: Request, state: StateDep,
                       _: AuthDep) -> schemas.ClassifyResponse:
        request.state.model = body.model if body.model in state.models else "-"
        served = state.model(body.model)
        encoded = _encode(served, body, state.settings)
        futures = served.batcher.submit([e.ids for e in encoded], time.monotonic() + state.settings.request_timeout_s)
        results = await _await_results(request, futures, state.settings.request_timeout_s)
        labels = served.runner.labels
        data = [schemas.ClassificationData(index=i, label=labels[max(range(len(p)), key=p.__getitem__)], probs=p,
                                           num_classes=len(p), truncated=e.truncated)
                for i, (p, e) in enumerate(zip(results, encoded))]
        tokens = sum(len(e.ids) for e in encoded)
        state.metrics.input_tokens.labels(body.model).inc(tokens)
        return schemas.ClassifyResponse(model=body.model, data=data,
                                        usage=schemas.UsageInfo(prompt_tokens=tokens, total_tokens=tokens))

    @app.post("/classify/cot", response_model=schemas.CotResponse, responses=ERROR_RESPONSES,
              summary="Chain-of-thought decoding on the same backbone, for comparison")
    async def classify_cot(body: schemas.CotRequest, request: Request, state: StateDep,
                           _: AuthDep) -> schemas.CotResponse:
        from .cot import CotItem, GenParams

        request.state.model = body.model if body.model in state.models else "-"
        served = state.cot_model(body.model)
        limit = state.settings.cot_max_new_tokens
        if body.max_new_tokens > limit:
            raise InvalidInput(f"max_new_tokens {body.max_new_tokens} is over the server limit {limit}",
                               field="max_new_tokens")
        if body.min_new_tokens > body.max_new_tokens:
            raise InvalidInput(f"min_new_tokens {body.min_new_tokens} is over max_new_tokens {body.max_new_tokens}",
                               field="min_new_tokens")
        encoded = _encode(served, body, state.settings)
        params = GenParams(body.temperature, body.top_p, body.max_new_tokens, body.seed, body.min_new_tokens)
        cot = served.cot
        # The CoT prompt wraps the same (possibly truncated) input text the classifier sees.
        items = [CotItem(cot.prompt_ids(served.runner.tokenizer.decode(e.ids), i), params)  # type: ignore[union-attr]
                 for i, e in enumerate(encoded)]
        timeout = state.settings.request_timeout_s
        futures = served.cot_batcher.submit(items, time.monotonic() + timeout)  # type: ignore[union-attr]
        results = await _await_results(request, futures, timeout)
        labels = served.runner.labels
        data = [schemas.CotData(index=i, label=labels[r.label], probs=[float(k == r.label) for k in range(len(labels))],
                                num_classes=len(labels), truncated=e.truncated, rationale=r.text,
                                generated_tokens=r.generated_tokens, parsed=r.parsed)
                for i, (r, e) in enumerate(zip(results, encoded))]
        prompt = sum(len(it.ids) for it in items)
        generated = sum(r.generated_tokens for r in results)
        state.metrics.generated_tokens.labels(body.model).inc(generated)
        return schemas.CotResponse(model=body.model, data=data, usage=schemas.UsageInfo(
            prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated))

    return app


def _encode(served: ServedModel, body: schemas.ClassifyRequest, settings: Settings):
    items = body.items()
    if not items:
        raise InvalidInput("input is empty", field="input")
    if len(items) > settings.max_inputs_per_request:
        raise TooLarge(f"{len(items)} inputs in one request; the limit is {settings.max_inputs_per_request}",
                       field="input")
    return [served.runner.encode(item, i, body.truncate, body.truncate_prompt_tokens) for i, item in enumerate(items)]


async def _await_results(request: Request, futures: list[asyncio.Future], timeout: float) -> list:
    """Wait for every future; give up (and cancel them, so the batcher skips them) when the
    client disconnects or the deadline passes."""
    gathered = asyncio.ensure_future(asyncio.gather(*futures))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({gathered, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if gathered in done:
            return gathered.result()
        for f in futures:
            f.cancel()
        if watcher in done:
            raise ClientGone()
        raise DeadlineExceeded(f"no result within {timeout:g}s (request_timeout_s)")
    finally:
        watcher.cancel()
        if not gathered.done():
            gathered.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientGone(ServiceError):
    status, kind = 499, "client_closed_request"

    def __init__(self):
        super().__init__("client closed the connection")


def _count_rejection(request: Request, status: int, kind: str) -> None:
    state: AppState | None = getattr(request.app.state, "dhrd", None)
    if state is not None and kind != "overloaded":  # overload is counted where it happens, with its reason
        state.metrics.rejected.labels(kind).inc()


def _card(name: str, served: ServedModel) -> schemas.ModelCard:
    m = served.runner.manifest
    return schemas.ModelCard(id=name, task=m.task, labels=list(m.labels), fields=list(served.runner.task.fields),
                             max_length=m.max_length, pooling=m.pooling, base_model=m.base_model.get("name"),
                             contract_version=m.contract_version, metrics=m.metrics)


class Observe:
    """Pure ASGI middleware: count requests and time them, by path, model and status. (Starlette's
    `@app.middleware("http")` wraps every response in an extra task and stream: measurable CPU per request.)"""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    @staticmethod
    def _record(scope, status: int, seconds: float) -> None:
        path = scope["path"] if scope["path"] in TRACKED_PATHS else "other"
        app_state = getattr(scope.get("app"), "state", None)
        state: AppState | None = getattr(app_state, "dhrd", None)
        if state is None or path in ("/metrics", "/health"):
            return
        model = (scope.get("state") or {}).get("model", "-")
        state.metrics.requests.labels(path, model, str(status)).inc()
        state.metrics.request_duration.labels(path, model).observe(seconds)


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over `max_bytes` (declared or streamed), before parsing."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # a streamed body with no (or a false) Content-Length
                    raise HTTPException(413, f"request body is over the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope, receive, send):
        from .errors import error_response

        response = error_response(413, "too_large", f"request body is over the limit of {self.max_bytes} bytes",
                                  field="body")
        await response(scope, receive, send)

