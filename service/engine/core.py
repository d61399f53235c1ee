"""`EngineCore`: what runs the models. It loads each export, warms it up, and gives every model a
`Batcher` whose forward passes run on one torch thread; with `--cot`, each model's base causal LM gets
its own batcher, whose decodes let classification passes run between their steps (torch_thread.py). It knows nothing of HTTP: the app drives it in-process (`--workers 0`), and the
engine process (`process.py`) drives it for front-end processes over a local socket.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Mapping, TypeVar

from contract.model import DTYPES, resolve_dtype

from ..device.generator import CotRunner
from ..device.cpu_heap import keep_freed_memory
from ..device.runner import ModelRunner, set_threads
from ..errors import EngineDead, NotReady, UnknownModel
from ..metrics import Metrics
from ..settings import Settings
from .batcher import BatchConfig, Batcher, DecodeBatcher, PipelinedBatcher
from .cot_prompt import CotPrompt
from .encoder import InputEncoder
from .torch_thread import TorchThread

log = logging.getLogger("dhrd.engine")
M = TypeVar("M")


def find_model(models: Mapping[str, M], name: str, ready: bool, load_error: str | None) -> M:
    """The one readiness check and model lookup, shared by the in-process path (`AppState.model`) and
    the engine process (`EngineServer`), so both refuse alike. Raises NotReady or UnknownModel."""
    if not ready:
        raise NotReady(load_error or "models are still loading; retry when GET /ready answers 200")
    found = models.get(name)
    if found is None:
        raise UnknownModel(f"model {name[:64]!r} is not served; available: {sorted(models)}", field="model")
    return found


@dataclass
class EngineModel:
    """One model as the engine runs it, with what an in-process front end needs to feed it: the input
    encoder (request items to ids) and, with --cot, the prompt around them."""

    runner: ModelRunner
    batcher: Batcher
    encoder: InputEncoder
    cot: CotRunner | None = None
    cot_batcher: Batcher | None = None
    cot_prompt: CotPrompt | None = None


class EngineCore:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, EngineModel] = {}
        # One worker thread runs all torch work (loading, warm-up, every forward pass): two forward passes
        # at once would only fight over the cores, and on CPU each thread that runs torch ops gets an
        # OpenMP team of its own; with a second team alive the forward ran ~20 % slower here
        # (python -m loadtest.forward profile vs the service, BENCHMARKS.md). A CoT decode is a long job on it that
        # runs the queued classification passes between its steps, so it cannot hold them for seconds.
        self.executor = TorchThread("dhrd-fwd")
        # With CUDA graphs the forward thread only launches; this thread waits for the device's results.
        self.finisher = ThreadPoolExecutor(1, thread_name_prefix="dhrd-finish")
        # Set when a forward pass hit a fatal device error: the context is dead, so whoever runs this
        # core (the engine process, or the one-process server) must exit non-zero and be restarted.
        self.dead: str | None = None
        self.died = asyncio.Event()

    async def load(self, runners: dict[str, ModelRunner] | None = None, verify_hashes: bool = True) -> None:
        """Load (unless given) and warm up every model, start its batchers. Raises what loading raised."""
        s = self.settings
        loop = asyncio.get_running_loop()
        if s.threads:  # OpenMP thread counts are per calling thread: set it where torch runs
            await loop.run_in_executor(self.executor, set_threads, s.threads)
        if s.device == "cpu":  # freed activations stay in the heap for the next pass (cpu_heap.py)
            keep_freed_memory()
        runners = dict(runners or {})
        dtype = resolve_dtype(s.dtype, s.device)
        if dtype != s.dtype:
            log.info("dtype auto: %s on %s (bfloat16 %s natively here)", dtype, s.device,
                     "runs" if dtype == "bfloat16" else "does not run")
        for name, path in s.models.items():
            if name not in runners:
                runners[name] = await loop.run_in_executor(
                    self.executor, ModelRunner.from_export, path, dtype, s.device, verify_hashes, s.compile,
                    s.allow_missing_manifest_digest)
        for name, runner in runners.items():
            if s.cuda_graphs and s.device.startswith("cuda") and hasattr(runner, "use_cuda_graphs"):
                await loop.run_in_executor(self.executor, runner.use_cuda_graphs, s.max_batch_size, s.max_batch_tokens)
            await loop.run_in_executor(self.executor, runner.warmup)
            if hasattr(runner, "observe_with"):  # after warm-up: its passes are not traffic
                runner.observe_with(self.metrics, name)
            # The export's tokenizer and task, shared with the runner: one load serves both.
            self.models[name] = EngineModel(runner, self._classify_batcher(name, runner),
                                            InputEncoder(runner.manifest, runner.task, runner.tokenizer))
        if s.cot:
            for name, model in self.models.items():
                cot = await loop.run_in_executor(self.executor, CotRunner, name, model.runner.manifest,
                                                 DTYPES[dtype], s.device, s.cot_cache)
                model.cot = cot
                model.cot_prompt = await loop.run_in_executor(self.executor, CotPrompt, name, model.runner.manifest)
                # Generation batches are bounded by count; their metrics carry the label "<model>:cot".
                model.cot_batcher = DecodeBatcher(f"{name}:cot", cot.generate, self._config(s.cot_max_batch_size, 10**9),
                                                  self.executor, self.metrics, on_fatal=self._device_failed)
                model.cot_batcher.start()

    def _classify_batcher(self, name: str, runner: ModelRunner) -> Batcher:
        s = self.settings
        config = self._config(s.max_batch_size, s.max_batch_tokens, packed=getattr(runner, "packing_off", None) is None)
        if getattr(runner, "graphs", None) is not None:  # CUDA graphs: launch the next pass while one runs
            batcher = PipelinedBatcher(name, runner.launch, self.finisher, config, self.executor, self.metrics,
                                       on_fatal=self._device_failed)
        else:
            batcher = Batcher(name, runner.predict, config, self.executor, self.metrics, on_fatal=self._device_failed)
        batcher.start()
        return batcher

    def _config(self, max_batch_size: int, max_batch_tokens: int, packed: bool = True) -> BatchConfig:
        s = self.settings
        return BatchConfig(max_batch_size, max_batch_tokens, s.max_wait_ms, s.max_queue, packed)

    def _device_failed(self, exc: BaseException) -> None:
        """A fatal device error (vLLM's EngineDeadError): stop taking work, answer what is queued, and
        tell the owner to exit; serving on would answer 500 forever while /ready said 200."""
        if self.dead is not None:
            return
        self.dead = f"fatal device error: {type(exc).__name__}: {exc}"
        log.critical("%s; the engine stops (restart the process)", self.dead)
        self.metrics.ready.set(0)
        for batcher in self.batchers():
            batcher.kill(EngineDead("the accelerator failed and the engine is stopping; retry on another replica"))
        self.died.set()

    def stalled(self, limit: float) -> tuple[str, float] | None:
        """Why a model cannot serve now (work waiting, no forward pass finished for over `limit` s) and for
        how long, or None."""
        stuck = {b.name: b.stalled_for(limit) for b in self.batchers()}
        stuck = {name: s for name, s in stuck.items() if s}
        if not stuck:
            return None
        return ("no forward pass has finished for " + ", ".join(f"{s:.0f} s (model {n!r})" for n, s in stuck.items())
                + " while work waits; the device or its thread may be stuck", max(stuck.values()))

    def batchers(self) -> list[Batcher]:
        return [b for m in self.models.values() for b in (m.batcher, m.cot_batcher) if b is not None]

    async def drain(self, grace_s: float) -> int:
        """Refuse new work, let queued work finish within `grace_s`; returns how many sequences got 503."""
        return sum(await asyncio.gather(*(b.drain(grace_s) for b in self.batchers())))

    async def close(self) -> None:
        for batcher in self.batchers():
            await batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.finisher.shutdown(wait=False, cancel_futures=True)
