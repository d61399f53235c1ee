"""The routes, thin: each asks the lifespan's `AppState` (readiness, the model) and hands the work to a
`ServedModel`. Probes and metrics need no key; the API routes take the bearer scheme when a key is set."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..engine.served import check_generation_params
from ..errors import ServiceError
from ..generation import GenParams
from ..metrics import exposition
from . import schemas
from .classify import classify_answer, input_options, request_items, unless_disconnected
from .deps import StateDep, state_of
from .error_mapping import error_response, http_status

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (401, 404, 408, 413, 422, 429, 500, 503, 504)}


def probes() -> APIRouter:
    """/health (liveness), /ready (readiness), /metrics: what a load balancer and Prometheus ask."""
    router = APIRouter()

    @router.get("/health", summary="Liveness: the process is up, and not stuck for 3 stall timeouts (503 then)",
                responses={503: {"model": schemas.ErrorResponse}})
    async def health(request: Request):
        state = state_of(request.app)  # None before the lifespan: up is all it can say
        try:
            if state is not None:
                state.check_alive()
        except ServiceError as exc:
            return error_response(http_status(exc), exc.kind, exc.message)
        return {"status": "ok"}

    @router.get("/ready", summary="Readiness: every model loaded and warm (503 before)",
                responses={503: {"model": schemas.ErrorResponse}})
    async def ready(state: StateDep):
        try:
            state.check()
        except ServiceError as exc:  # answered here, not by the handler: a probe's 503 is not a rejected request
            return error_response(http_status(exc), exc.kind, exc.message)
        return {"status": "ready", "models": sorted(state.models)}

    @router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics(state: StateDep) -> Response:
        return Response(exposition(state.metrics), media_type=CONTENT_TYPE_LATEST)

    return router


def api(auth: list) -> APIRouter:
    """/v1/models, /classify (and vLLM's /v1/classify), /classify/cot. `auth`: the routes' dependencies
    (the bearer scheme in the OpenAPI document when a key is required; `Admission` checks the key)."""
    router = APIRouter(dependencies=auth)

    @router.get("/v1/models", response_model=schemas.ModelList, responses=ERROR_RESPONSES)
    async def models(state: StateDep) -> schemas.ModelList:
        state.check()  # 503 whenever /ready is: no empty list while loading, no model the engine cannot run
        return schemas.ModelList(data=[schemas.ModelCard(id=name, **served.describe())
                                       for name, served in sorted(state.models.items())])

    @router.post("/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES,
                 summary="Classify text(s) or task field object(s) with the pooled head")
    @router.post("/v1/classify", response_model=schemas.ClassifyResponse, responses=ERROR_RESPONSES,
                 summary="The same as POST /classify, under vLLM's versioned path")
    async def classify(body: schemas.ClassifyRequest, request: Request, state: StateDep) -> Response:
        # With the fast path on (the default), requests that validate never get here (fast_path.py); what does
        # is answered by the same function.
        answer = await classify_answer(state, body, request.scope, request.receive)
        return Response(answer, media_type="application/json")

    @router.post("/classify/cot", response_model=schemas.CotResponse, responses=ERROR_RESPONSES,
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

    return router
