"""Service settings: one `Settings` object, from `DHRD_*` environment variables or `dhrd serve` flags."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Environment: `DHRD_<FIELD>` (e.g. `DHRD_MAX_BATCH_SIZE=64`);
    models as `DHRD_MODELS='{"cb": "exports/cb"}'` (JSON) or `cb=exports/cb,rte=exports/rte`."""

    model_config = SettingsConfigDict(env_prefix="DHRD_", extra="forbid")

    models: Annotated[dict[str, Path], NoDecode] = Field(default_factory=dict, description="served name -> export directory")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # 0: one process; the event loop and the forward pass share its GIL. N >= 1: N front-end processes
    # (HTTP, validation, tokenisation) feed one engine process (batching, forward passes) over a local
    # socket, so the front end scales with cores and never starves the device (ARCHITECTURE.md).
    workers: int | None = Field(None, ge=0, le=64, description="front-end processes feeding one engine process; "
                                "0: serve in one process; default: 0 on CPU, 4 on a GPU")

    # --- model runner ---------------------------------------------------------------------
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="weight and compute dtype")
    device: str = Field("cpu", description="'cpu' or 'cuda[:N]'")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    verify_hashes: bool = Field(True, description="check every export file against its manifest sha256")
    compile: bool = Field(False, description="torch.compile the classifier (inductor, frozen weights); slower "
                                             "start-up, see BENCHMARKS.md for what it buys")
    cuda_graphs: bool = Field(True, description="on a CUDA device, capture the packed classifier as CUDA graphs "
                                                "for total-token buckets at start-up; eager otherwise")

    # --- dynamic batching -------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=1024, description="sequences per forward pass")
    # On CPU, throughput peaks near 1,024 tokens per pass and falls beyond ~2,000 (activations leave the
    # cache): `python -m loadtest.profile` measures it. On a GPU, raise it. Passes are packed (no padding
    # computed), so this counts real tokens; for a model served padded (--compile) it counts padded ones.
    max_batch_tokens: int = Field(1024, ge=16, description="tokens per forward pass (CPU optimum ~1024)")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="how long a batch waits to fill")
    max_queue: int = Field(512, ge=1, description="queued sequences per model before 429")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline, queue wait included")
    shutdown_grace_s: float | None = Field(None, ge=0, description="on SIGTERM, how long queued work may still "
                                           "finish before the rest is answered 503 (default: request_timeout_s)")

    # --- request limits ---------------------------------------------------------------------
    max_inputs_per_request: int = Field(128, ge=1, description="more inputs in one request -> 413")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="larger request body -> 413")
    api_key: str | None = Field(None, description="when set, require `Authorization: Bearer <key>`")
    protect_metrics: bool = Field(False, description="with api_key: /metrics needs the key too")
    protect_docs: bool = Field(False, description="with api_key: /docs and /openapi.json need the key too")
    # Admission before any parsing (text-embeddings-inference takes its permit before tokenising):
    # past this many requests in flight, POSTs are answered 429 without reading their bodies.
    max_concurrent_requests: int = Field(1024, ge=1, description="requests in flight before an early 429")
    body_timeout_s: float = Field(10.0, gt=0, description="a request body not fully received by then -> 408")
    # The last line of defence, at the connection level: uvicorn answers requests past this many open
    # connections with its own plain-text 503 (the one answer that is not our JSON shape).
    max_connections: int = Field(4096, ge=16, description="open connections before uvicorn refuses more")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="no CORS unless origins are listed")

    # --- chain-of-thought comparison endpoint ---------------------------------------------------
    cot: bool = Field(False, description="enable POST /classify/cot (loads each export's base causal LM)")
    cot_max_new_tokens: int = Field(500, ge=1, le=4096, description="upper limit a request may ask for")
    cot_max_batch_size: int = Field(8, ge=1, le=256)
    cot_cache: Literal["dynamic", "static"] = Field("dynamic", description="CoT KV cache: 'static' is "
                                                    "preallocated and compiled by transformers on a GPU")
    # A 500-token decode on a 2-core CPU takes minutes, far past the classifier's deadline.
    cot_request_timeout_s: float = Field(900.0, gt=0, description="per-request deadline of POST /classify/cot")

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value):
        """Accept `name=path,name=path` as well as a JSON object or a dict."""
        if isinstance(value, str) and value.strip().startswith("{"):
            return json.loads(value)
        if isinstance(value, str):
            pairs = [p for p in value.split(",") if p.strip()]
            parsed = {}
            for pair in pairs:
                name, sep, path = pair.partition("=")
                if not sep or not name.strip() or not path.strip():
                    raise ValueError(f"model spec {pair!r} must look like NAME=EXPORT_DIR")
                parsed[name.strip()] = path.strip()
            return parsed
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_origins(cls, value):
        return [o.strip() for o in value.split(",") if o.strip()] if isinstance(value, str) else value

    @property
    def front_ends(self) -> int:
        """Front-end processes to run (0: one process). On CPU one process measured faster (the cores are
        shared anyway: BENCHMARKS.md, "Serving engine"); on a GPU the forward pass must not share a GIL."""
        if self.workers is not None:
            return self.workers
        return 0 if self.device == "cpu" else max(1, min(4, (os.cpu_count() or 2) // 2))

    @property
    def grace_s(self) -> float:
        return self.request_timeout_s if self.shutdown_grace_s is None else self.shutdown_grace_s

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.max_inputs_per_request > self.max_queue:
            raise ValueError(f"max_inputs_per_request ({self.max_inputs_per_request}) is over max_queue "
                             f"({self.max_queue}): such a request could never be queued; lower it or raise max_queue")
        for name in self.models:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"model name {name!r} may only hold letters, digits, '-' and '_'")
        return self
