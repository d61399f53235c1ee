"""`create_app(settings)`: the FastAPI app. The lifespan owns models, batchers and metrics (`AppState`);
middleware guards and observes; the routes (routes.py) stay thin."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Security
from fastapi_swagger import patch_fastapi

from ..metrics import Metrics
from ..settings import Settings
from . import routes
from .deps import BEARER
from .error_mapping import install_handlers
from .fast_path import FastClassify
from .middleware import Admission, BodyGuard, Observe
from .state import AppState

if TYPE_CHECKING:  # the HTTP edge names the device's runner in hints only; the engine loads it
    from ..device.runner import ModelRunner


def create_app(settings: Settings, runners: dict[str, ModelRunner] | None = None,
               hashes_checked: bool = False, engine_socket: str | None = None,
               ready_before_serving: bool = False) -> FastAPI:
    """Build the app. `runners` (tests) are served in addition to / instead of loading `settings.models`;
    `hashes_checked`: the caller verified every export's sha256 already (`dhrd serve`), so loading skips it;
    `engine_socket`: a front-end process of `--workers N`, whose forward passes run in the engine process
    listening there; `ready_before_serving`: the lifespan's start-up waits for loading (a front end that
    replaces a dead one joins the others only when ready: uvicorn accepts once the start-up is done)."""
    lifespan = serving_lifespan(settings, runners, settings.verify_hashes and not hashes_checked, engine_socket,
                                ready_before_serving)
    # /docs is Swagger UI served from the package (fastapi-swagger), not from a CDN: it works offline.
    app = FastAPI(title="DHRD classifier service", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,
                  description="Pooled classifiers trained with Dual-Head Reasoning Distillation. "
                              "POST /classify speaks vLLM's classification API.")
    install_handlers(app)
    patch_fastapi(app, docs_url="/docs", redirect_from_root_to_docs=False)
    add_middleware(app, settings)
    app.include_router(routes.probes())
    # The bearer scheme is declared in the OpenAPI document only when a key is required; `Admission`
    # checks the key itself, from the headers, before the body is read.
    app.include_router(routes.api([Security(BEARER)] if settings.api_key else []))
    return app


def serving_lifespan(settings: Settings, runners: dict[str, ModelRunner] | None, verify_hashes: bool,
                     engine_socket: str | None, ready_before_serving: bool):
    """The app's lifespan: `AppState` on `app.state.dhrd`, models loaded in the background so /health and
    /ready answer (503) while they load and warm up; on shutdown, everything closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState(settings, Metrics())
        app.state.dhrd = state
        loading = asyncio.create_task(state.load(runners, verify_hashes=verify_hashes, engine_socket=engine_socket))
        if ready_before_serving:
            await loading
        yield
        loading.cancel()
        await state.close()

    return lifespan


def add_middleware(app: FastAPI, settings: Settings) -> None:
    """Outermost last: Observe sees every answer; CORS preflights pass before the key check; FastClassify
    answers POST /classify once admitted and its body read, and hands the rest to FastAPI."""
    if settings.fast_path:
        app.add_middleware(FastClassify)  # type: ignore[arg-type]
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)  # type: ignore[arg-type]
    app.add_middleware(Admission, settings=settings)  # type: ignore[arg-type]
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Observe)  # type: ignore[arg-type]
