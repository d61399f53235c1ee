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

    # hide_input_in_errors: a refused setting (an API key among them) is not echoed into logs.
    model_config = SettingsConfigDict(env_prefix="DHRD_", extra="forbid", hide_input_in_errors=True)

    models: Annotated[dict[str, Path], NoDecode] = Field(default_factory=dict, description="served name -> export directory")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # 0: one process; the event loop and the forward pass share its GIL. N >= 1: N front-end processes
    # (HTTP, validation, tokenisation) feed one engine process (batching, forward passes) over a local
    # socket, so the front end scales with cores and never starves the device (ARCHITECTURE.md).
    workers: int | None = Field(None, ge=0, le=64, description="front-end processes feeding one engine process; "
                                "0: serve in one process; default: 0 on CPU, 4 on a GPU")
    # A front end whose event loop stops (a blocking call, a pause) would keep receiving its share of new
    # connections and answer none: the supervisor replaces it once it has not ticked for this long.
    front_end_timeout_s: float = Field(5.0, gt=0, description="with --workers: a front end whose event loop has "
                                       "not run for this long is killed and replaced on a fresh socket")
    socket_per_front_end: bool = Field(True, description="with --workers: one listening socket per front end "
                                       "(SO_REUSEPORT, new connections spread evenly) or one shared socket")

    # --- model runner ---------------------------------------------------------------------
    # "auto": bfloat16 where the device runs it natively (a GPU, a CPU with AVX-512 BF16 or AMX), float32
    # elsewhere: on an AVX2-only CPU PyTorch emulates bf16 matmuls about 100x slower than fp32.
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="weight and compute dtype; auto: "
                                                          "bfloat16 where the device runs it natively, else float32")
    device: str = Field("cpu", description="'cpu' or 'cuda[:N]'")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    verify_hashes: bool = Field(True, description="check every export file against its manifest sha256")
    # Deleting manifest.sha256 must not turn a tampered manifest into a warning: a missing digest is
    # refused unless the operator says, for exports written before the digest existed, to load unchecked.
    allow_missing_manifest_digest: bool = Field(False, description="load exports that have no manifest.sha256 "
                                                "(written before it existed); their manifest is NOT checked")
    # An int8 export (`dhrd quantize`) serves only where its gate passed on this kind of CPU (contract/int8.py).
    allow_ungated_int8: bool = Field(False, description="serve int8 exports whose accuracy gate has not passed on "
                                     "this kind of CPU (their answers may differ from the float export's)")
    compile: bool = Field(False, description="torch.compile the classifier (inductor, frozen weights); slower "
                                             "start-up, see BENCHMARKS.md for what it buys")
    # Freezing the start-up heap keeps the collector from walking it in every oldest-generation collection,
    # ~200 ms per collection measured on a loaded process (gc_heap.py; BENCHMARKS.md, the tail).
    gc_freeze: bool = Field(True, description="freeze the start-up heap once ready, so cyclic garbage collections "
                                              "never walk it (shorter pauses)")
    # FastAPI's request machinery cost more CPU per /classify request than the work (http/fast_path.py); the
    # fast path answers valid bodies itself and leaves everything else to the FastAPI route.
    fast_path: bool = Field(True, description="answer valid POST /classify bodies without FastAPI's request "
                                              "machinery (same answers, less CPU); off: every request through it")
    cuda_graphs: bool = Field(True, description="on a CUDA device, capture the packed classifier as CUDA graphs "
                                                "for total-token buckets at start-up; eager otherwise")

    # --- dynamic batching -------------------------------------------------------------------
    max_batch_size: int = Field(32, ge=1, le=1024, description="sequences per forward pass")
    # On CPU, throughput peaks near 1,024 tokens per pass and falls beyond ~2,000 (activations leave the
    # cache): `python -m loadtest.forward profile` measures it. On a GPU, raise it. Passes are packed (no padding
    # computed), so this counts real tokens; for a model served padded (--compile) it counts padded ones.
    max_batch_tokens: int = Field(1024, ge=16, description="tokens per forward pass (CPU optimum ~1024)")
    # Continuous batching: an idle device takes a classification request at once, and what arrives during
    # a forward pass forms the next batch. This wait applies only while a pipelined (CUDA graph) batch is
    # still on the device (how long arrivals gather before the next launch behind it), and to CoT
    # generation, whose static batch cannot take requests mid-decode (how long a batch waits to fill).
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="how long arrivals gather: behind a pipelined "
                               "(CUDA graph) batch still on the device, and for a CoT batch; an idle device "
                               "starts a classification at once")
    max_queue: int = Field(512, ge=1, description="queued sequences per model before 429")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request deadline, queue wait included")
    shutdown_grace_s: float | None = Field(None, ge=0, description="on SIGTERM, how long queued work may still "
                                           "finish before the rest is answered 503 (default: request_timeout_s)")
    stall_timeout_s: float = Field(10.0, gt=0, description="/ready answers 503 while a model has had work and "
                                   "finished no forward pass for this long (and 4 of its usual passes), or the "
                                   "engine process has not answered a heartbeat for this long")

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
    # The last line of defence, at the connection level: past this many open connections a request gets
    # a JSON 503 from the protocol (service/connections.py; uvicorn's own answer was plain text).
    max_connections: int = Field(4096, ge=16, description="open connections before requests get a JSON 503")
    # What uvicorn does not bound (service/connections.py): a connection that sends nothing, or its
    # headers slowly, or headers of any size, holds a connection slot or memory without the API key.
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this "
                                    "many seconds of the connection opening or of the previous answer "
                                    "(idle: closed; partial: 408)")
    # uvicorn's default, kept: one line per request at --log-level info. At thousands of requests a second
    # that is a flood for the log pipeline and a share of each front end's CPU (BENCHMARKS.md).
    access_log: bool = Field(True, description="log one line per HTTP request (uvicorn's access log)")
    max_header_bytes: int = Field(65536, ge=1024, description="request line and headers larger -> 431")
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
        """Accept `name=path,name=path` as well as a JSON object or a dict. A name given twice is refused:
        `--model cb=A --model cb=B` would otherwise serve B without a word."""
        if isinstance(value, str) and value.strip().startswith("{"):
            return json.loads(value, object_pairs_hook=_unique_models)
        if isinstance(value, str):
            pairs = []
            for pair in (p for p in value.split(",") if p.strip()):
                name, sep, path = pair.partition("=")
                if not sep or not name.strip() or not path.strip():
                    raise ValueError(f"--model spec {pair!r} must look like NAME=EXPORT_DIR")
                pairs.append((name.strip(), path.strip()))
            return _unique_models(pairs)
        return value

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, value: str | None) -> str | None:
        """An empty key would silently serve without auth; a key with spaces or non-ASCII characters would
        never match (HTTP carries header bytes, and clients send UTF-8 where the server reads Latin-1)."""
        if value is None:
            return value
        if not value.strip():
            raise ValueError("--api-key (DHRD_API_KEY) is empty, which would serve without auth; "
                             "leave the flag out to serve without a key, or give a real key")
        if not all("!" <= c <= "~" for c in value):
            raise ValueError("--api-key (DHRD_API_KEY) may only hold printable ASCII without spaces "
                             "(e.g. `openssl rand -hex 32`): no client could send another key so that it matches")
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


def _unique_models(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """`--model` / DHRD_MODELS pairs as a dict; raises ValueError naming a name given twice."""
    models: dict[str, str] = {}
    for name, path in pairs:
        if name in models:
            raise ValueError(f"--model (DHRD_MODELS) names model {name!r} twice ({models[name]!r} and {path!r}); "
                             "each name serves one export")
        models[name] = path
    return models
