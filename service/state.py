"""The app's lifespan objects: served models (runner + batcher, optional CoT), settings, metrics, readiness."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from contract.model import DTYPES

from .batcher import BatchConfig, Batcher
from .errors import NotReady, ShuttingDown, UnknownModel
from .metrics import Metrics
from .runner import ModelRunner
from .served import ServedModel
from .settings import Settings

log = logging.getLogger("dhrd.service")


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    # One worker thread runs all torch work (loading, warm-up, every forward pass): two forward passes
    # at once would only fight over the cores, and on CPU each thread that runs torch ops gets an
    # OpenMP team of its own; with a second team alive the forward ran ~20 % slower here
    # (python -m loadtest.profile vs the service, BENCHMARKS.md).
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="dhrd-fwd"))

    def model(self, name: str) -> ServedModel:
        """The served model called `name`; raises NotReady before warm-up, UnknownModel for other names,
        ShuttingDown once draining."""
        if self.draining:
            raise ShuttingDown("the service is shutting down; retry on another replica")
        if not self.ready:
            raise NotReady(self.load_error or "models are still loading; retry when GET /ready answers 200")
        served = self.models.get(name)
        if served is None:
            raise UnknownModel(f"model {name[:64]!r} is not served; available: {sorted(self.models)}", field="model")
        return served

    async def load(self, runners: dict[str, ModelRunner] | None = None, verify_hashes: bool = True) -> None:
        """Load (unless given), warm up and start batching for every model; then mark ready."""
        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            if s.threads:  # OpenMP thread counts are per calling thread: set it where torch runs
                import torch

                await loop.run_in_executor(self.executor, torch.set_num_threads, s.threads)
            runners = dict(runners or {})
            for name, path in s.models.items():
                if name not in runners:
                    runners[name] = await loop.run_in_executor(
                        self.executor, ModelRunner.from_export, path, s.dtype, s.device, verify_hashes, s.compile)
            for name, runner in runners.items():
                await loop.run_in_executor(self.executor, runner.warmup)
                self.models[name] = ServedModel(name, runner, self._batcher(name, runner.predict, s.max_batch_size,
                                                                            s.max_batch_tokens))
            if s.cot:
                for name, cot in (await loop.run_in_executor(self.executor, self._load_cot)).items():
                    served = self.models[name]
                    # Generation batches are bounded by count; their metrics carry the label "<model>:cot".
                    served.cot = cot
                    served.cot_batcher = self._batcher(f"{name}:cot", cot.generate, s.cot_max_batch_size, 10**9)
        except Exception as exc:  # reported by /ready; the process stays up to say why
            self.load_error = f"loading failed: {exc}"
            log.exception("model loading failed")
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s", ", ".join(self.models))

    def _batcher(self, name: str, predict, max_batch_size: int, max_batch_tokens: int) -> Batcher:
        s = self.settings
        batcher = Batcher(name, predict, BatchConfig(max_batch_size, max_batch_tokens, s.max_wait_ms, s.max_queue),
                          self.executor, self.metrics)
        batcher.start()
        return batcher

    def _load_cot(self) -> dict:
        """Each model's base causal LM for the CoT endpoint (runs in the torch thread)."""
        from .cot import CotRunner

        s = self.settings
        return {name: CotRunner(name, served.runner.manifest, DTYPES[s.dtype], s.device)
                for name, served in self.models.items()}

    async def drain(self) -> None:
        """SIGTERM: fail readiness (a load balancer stops sending), refuse new work, let queued work finish
        within the grace period, answer what is left 503."""
        self.draining = True
        self.metrics.ready.set(0)
        batchers = [b for s in self.models.values() for b in (s.batcher, s.cot_batcher) if b is not None]
        failed = await asyncio.gather(*(b.drain(self.settings.grace_s) for b in batchers))
        log.info("drained: %d queued sequence(s) answered 503 after the %.0f s grace period", sum(failed),
                 self.settings.grace_s)

    async def close(self) -> None:
        for served in self.models.values():
            await served.batcher.stop()
            if served.cot_batcher:
                await served.cot_batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
