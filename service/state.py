"""The app's lifespan objects: served models (runner + batcher, optional CoT), settings, metrics, readiness."""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .batcher import BatchConfig, Batcher
from .errors import Disabled, NotReady, UnknownModel
from .metrics import Metrics
from .runner import ModelRunner
from .settings import Settings

log = logging.getLogger("dhrd.service")


@dataclass
class ServedModel:
    runner: ModelRunner
    batcher: Batcher
    cot: object | None = None  # cot.CotRunner, loaded only with settings.cot
    cot_batcher: Batcher | None = None


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    load_error: str | None = None
    # One worker thread runs all torch work (loading, warm-up, every forward pass): two forward passes
    # at once would only fight over the cores, and on CPU each thread that runs torch ops gets an
    # OpenMP team of its own; with a second team alive the forward ran ~20 % slower here
    # (python -m loadtest.profile vs the service, BENCHMARKS.md).
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="dhrd-fwd"))

    def model(self, name: str) -> ServedModel:
        if not self.ready:
            raise NotReady(self.load_error or "models are still loading; retry when GET /ready answers 200")
        served = self.models.get(name)
        if served is None:
            raise UnknownModel(f"model {name!r} is not served; available: {sorted(self.models)}", field="model")
        return served

    def cot_model(self, name: str) -> ServedModel:
        served = self.model(name)
        if served.cot is None:
            raise Disabled("the CoT endpoint is disabled; start the service with --cot (DHRD_COT=true)")
        return served

    async def load(self, runners: dict[str, ModelRunner] | None = None) -> None:
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
                        self.executor, ModelRunner.from_export, name, path, s.dtype, s.device, s.verify_hashes,
                        s.compile)
            for name, runner in runners.items():
                await loop.run_in_executor(self.executor, runner.warmup)
                self._add(name, runner)
            if s.cot:
                for name, cot in (await loop.run_in_executor(self.executor, self._load_cot)).items():
                    self._add_cot(name, cot)
        except Exception as exc:  # reported by /ready; the process stays up to say why
            self.load_error = f"loading failed: {exc}"
            log.exception("model loading failed")
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s", ", ".join(self.models))

    def _add(self, name: str, runner: ModelRunner) -> None:
        s = self.settings
        config = BatchConfig(s.max_batch_size, s.max_batch_tokens, s.max_wait_ms, s.max_queue)
        batcher = Batcher(name, runner.predict, config, self.executor, self.metrics)
        batcher.start()
        self.models[name] = ServedModel(runner, batcher)

    def _load_cot(self) -> dict:
        import torch

        from .cot import CotRunner

        s = self.settings
        dtype = torch.bfloat16 if s.dtype == "bfloat16" else torch.float32
        return {name: CotRunner(name, served.runner.manifest, served.runner.task, dtype, s.device)
                for name, served in self.models.items()}

    def _add_cot(self, name: str, cot) -> None:
        s = self.settings
        # Generation batches are bounded by count; their metrics carry the label "<model>:cot".
        config = BatchConfig(s.cot_max_batch_size, 10**9, s.max_wait_ms, s.max_queue)
        served = self.models[name]
        served.cot = cot
        served.cot_batcher = Batcher(f"{name}:cot", cot.generate, config, self.executor, self.metrics)
        served.cot_batcher.start()

    async def close(self) -> None:
        for served in self.models.values():
            await served.batcher.stop()
            if served.cot_batcher:
                await served.cot_batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
