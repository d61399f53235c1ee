"""`create_app(settings)`: the FastAPI app. The lifespan owns models, batchers and metrics; routes stay thin."""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response, Security
from fastapi_swagger import patch_fastapi
from prometheus_client import CONTENT_TYPE_LATEST

from ..engine.served import check_generation_params
from ..errors import ServiceError
from ..generation import GenParams
from ..metrics import Metrics, exposition
from ..settings import Settings
from . import schemas
from .classify import classify_answer, input_options, request_items, unless_disconnected
from .deps import BEARER, StateDep, state_of
from .error_mapping import error_response, http_status, install_handlers
from .fast_path import FastClassify
from .middleware import Admission, BodyGuard, Observe
from .state import AppState

if TYPE_CHECKING:  # the HTTP edge names the device's runner in hints only; the engine loads it
    from ..device.runner import ModelRunner

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (401, 404, 408, 413, 422, 429, 500, 503, 504)}



def create_app(settings: Settings, runners: dict[str, ModelRunner] | None = None,
               hashes_checked: bool = False, engine_socket: str | None = None,
               ready_before_serving: bool = False) -> FastAPI:
    """Build the app. `runners` (tests) are served in addition to / instead of loading `settings.models`;
    `hashes_checked`: the caller verified every export's sha256 already (`dhrd serve`), so loading skips it;
    `engine_socket`: a front-end process of `--workers N`, whose forward passes run in the engine process
    listening there; `ready_before_serving`: the lifespan's start-up waits for loading (a front end that
    replaces a dead one joins the others only when ready: uvicorn accepts once the start-up is done)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState(settings, Metrics())
        app.state.dhrd = state
        # Load in the background so /health and /ready answer (503) while models load and warm up.
        loading = asyncio.create_task(state.load(runners, verify_hashes=settings.verify_hashes and not hashes_checked,
                                                 engine_socket=engine_socket))
        if ready_before_serving:
            await loading
        yield
        loading.cancel()
        await state.close()

    # The bearer scheme is declared in the OpenAPI document only when a key is required; `Admission`
    # checks the key itself, from the headers, before the body is read.
    auth = [Security(BEARER)] if settings.api_key else []
    # /docs is Swagger UI served from the package (fastapi-swagger), not from a CDN: it works offline.
    app = FastAPI(title="DHRD classifier service", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  description="Pooled classifiers trained with Dual-Head Reasoning Distillation. "
                              "POST /classify speaks vLLM's classification API.")
    install_handlers(app)
    patch_fastapi(app, docs_url="/docs", redirect_from_root_to_docs=False)
    # Outermost last: Observe sees every answer; CORS preflights pass before the key check; FastClassify
    # answers POST /classify once admitted and its body read, and hands the rest to FastAPI.
    if settings.fast_path:
        app.add_middleware(FastClassify)  # type: ignore[arg-type]
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)  # type: ignore[arg-type]
    app.add_middleware(Admission, settings=settings)  # type: ignore[arg-type]
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Observe)  # type: ignore[arg-type]

    @app.get("/health", summary="Liveness: the process is up, and not stuck for 3 stall timeouts (503 then)",
             responses={503: {"model": schemas.ErrorResponse}})
    async def health(request: Request):
        state = state_of(request.app)  # None before the lifespan: up is all it can say
        try:
            if state is not None:
                state.check_alive()
        except ServiceError as exc:
            return error_response(http_status(exc), exc.kind, exc.message)
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every model loaded and warm (503 before)",
             responses={503: {"model": schemas.ErrorResponse}})
    async def ready(state: StateDep):
        try:
            state.check()
        except ServiceError as exc:  # answered here, not by the handler: a probe's 503 is not a rejected request
            return error_response(http_status(exc), exc.kind, exc.message)
        return {"status": "ready", "models": sorted(state.models)}

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics(state: StateDep) -> Response:
        return Response(exposition(state.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=schemas.ModelList, responses=ERROR_RESPONSES, dependencies=auth)
    async def models(state: StateDep) -> schemas.ModelList:
        state.check()  # 503 whenever /ready is: no empty list while loading, no model the engine cannot run
        return schemas.ModelList(data=[schemas.ModelCard(id=name, **served.describe())
                                       for name, served in sorted(state.models.items())])

    @app.post("/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES, dependencies=auth,
              summary="Classify text(s) or task field object(s) with the pooled head")
    @app.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES, dependencies=auth,
              summary="The same as POST /classify, under vLLM's versioned path")
    async def classify(body: schemas.ClassifyRequest, request: Request, state: StateDep) -> Response:
        # With the fast path on (the default), requests that validate never get here (fast_path.py); what does
        # is answered by the same function.
        answer = await classify_answer(state, body, request.scope, request.receive)
        return Response(answer, media_type="application/json")

    @app.post("/classify/cot", response_model=schemas.CotResponse, responses=ERROR_RESPONSES, dependencies=auth,
              summary="Chain-of-thought decoding on the same backbone, for comparison")
    async def classify_cot(body: schemas.CotRequest, request: Request, state: StateDep) -> schemas.CotResponse:
        served = state.model(body.model)
        request.state.model = body.model
        params = GenParams(body.temperature, body.top_p, body.max_new_tokens, body.seed, body.min_new_tokens)
        check_generation_params(params, state.settings.cot_max_new_tokens)
        items = request_items(body, state.settings)
        deadline = time.monotonic() + state.settings.cot_request_timeout_s
        results = await unless_disconnected(request.receive, served.generate(items, params, input_options(body),
                                                                              deadline))
        prompt = sum(r.prompt_tokens for r in results)
        generated = sum(r.generated_tokens for r in results)
        state.metrics.generated_tokens.labels(body.model).inc(generated)
        data = [schemas.CotData(index=i, label=r.label, probs=r.probs, num_classes=len(r.probs),
                                truncated=r.truncated, rationale=r.rationale, generated_tokens=r.generated_tokens,
                                parsed=r.parsed) for i, r in enumerate(results)]
        return schemas.CotResponse(model=body.model, data=data, usage=schemas.UsageInfo(
            prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated))

    return app
