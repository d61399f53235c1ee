"""The cyclic garbage collector in a serving process: freeze the start-up heap, and count the pauses.

After start-up a serving process holds hundreds of thousands of long-lived objects (torch, transformers,
the tokenizer, FastAPI's routes), none of which will ever be garbage. Every oldest-generation collection
still walks all of them, stopping the process for tens of milliseconds while requests wait: a latency
tail made of work that reclaims nothing. `gc.freeze()` after warm-up moves them out of the collector's
sight (vLLM does it in its API server and engine processes, SGLang after warm-up); objects made later
are collected as before, so a cycle created while serving is still reclaimed.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

from .metrics import Metrics

log = logging.getLogger("dhrd.service")


def freeze_startup_heap() -> int:
    """Collect once, then freeze what survives (call after models are loaded and warm). Returns how many
    objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcWatch:
    """A serving process's collector, from ready to close: freezes the start-up heap (`freeze`), counts
    collections and pause time per generation, and moves the counts into Prometheus every `interval` s.

    The collector's callback only updates plain numbers: it can run inside any allocation on any thread,
    one holding a metric's lock among them, so it must not touch the metrics itself; `flush()` does, from
    the event loop.
    """

    def __init__(self, metrics: Metrics, freeze: bool, interval: float = 1.0):
        self.metrics, self.freeze, self.interval = metrics, freeze, interval
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._flushed: tuple[list[int], list[float]] = ([0, 0, 0], [0.0, 0.0, 0.0])
        self._started = 0.0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Call once the process is ready (models loaded and warm): what exists now lives as long as it does."""
        if self.freeze:
            log.info("gc: froze %d start-up objects (no collection will walk them again)", freeze_startup_heap())
        gc.callbacks.append(self._callback)
        self._task = asyncio.get_running_loop().create_task(self._flush_every())

    def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        self.flush()
        if self.freeze:
            gc.unfreeze()  # a test (or an embedding program) builds many apps in one process
        log.info("gc while serving: %s", self.summary())

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause, generation = time.perf_counter() - self._started, info["generation"]
        self.collections[generation] += 1
        self.seconds[generation] += pause
        self.longest[generation] = max(self.longest[generation], pause)

    def flush(self) -> None:
        """Add what was counted since the last flush to dhrd_gc_{collections,pause_seconds}_total."""
        counts, seconds = self._flushed
        for generation in range(3):
            label = str(generation)
            self.metrics.gc_collections.labels(label).inc(self.collections[generation] - counts[generation])
            self.metrics.gc_pause_seconds.labels(label).inc(self.seconds[generation] - seconds[generation])
        self._flushed = (list(self.collections), list(self.seconds))

    def summary(self) -> str:
        return "; ".join(f"gen {g}: {self.collections[g]} collections, {1000 * self.seconds[g]:.0f} ms in all, "
                         f"longest {1000 * self.longest[g]:.1f} ms" for g in range(3))
