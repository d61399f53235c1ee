"""Dynamic batching: a bounded queue per model, cut into batches by size, padded tokens and wait time.

Three stages, as in text-embeddings-inference: the handler validates, tokenises and `submit`s
(awaiting futures); this batcher's task collects sequences and cuts batches; the forward pass
runs in one worker thread shared by all models (the CPU has no spare cores for two). Requests
whose client went away, or whose deadline passed, are dropped before they cost a forward pass.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Sized

from .errors import DeadlineExceeded, Overloaded
from .metrics import Metrics

# A payload is anything whose len() is its token count: a list of token ids for classification,
# a `cot.CotItem` for generation. The predict function returns one result per payload.
PredictFn = Callable[[Sequence[Sized]], list[Any]]


@dataclass
class BatchConfig:
    """The batching knobs; their defaults live in `Settings` (state.py builds this from it)."""

    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queue: int


@dataclass
class _Pending:
    payload: Sized
    future: asyncio.Future
    deadline: float
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, name: str, predict: PredictFn, config: BatchConfig, executor: Executor, metrics: Metrics):
        self.name = name
        self.predict = predict
        self.config = config
        self.executor = executor
        self.metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._arrived = asyncio.Event()  # set by submit; waiting on it (not on queue.get) loses nothing on timeout
        self._task: asyncio.Task | None = None
        self._batch_seconds = 0.05  # running estimate of one forward pass, for Retry-After

    # --- handler side -----------------------------------------------------------------------
    def submit(self, sequences: Sequence[Sized], deadline: float) -> list[asyncio.Future]:
        """Queue sequences (all or none); returns one future per sequence. Raises Overloaded when full."""
        if self._queue.qsize() + len(sequences) > self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            waits = (self._queue.qsize() / self.config.max_batch_size + 1) * self._batch_seconds
            raise Overloaded(f"model {self.name!r} queue is full ({self._queue.qsize()} of "
                             f"{self.config.max_queue} sequences waiting); retry later", retry_after=waits)
        loop = asyncio.get_running_loop()
        futures = []
        for payload in sequences:
            fut = loop.create_future()
            self._queue.put_nowait(_Pending(payload, fut, deadline))
            futures.append(fut)
        self._arrived.set()
        self.metrics.queue_depth.labels(self.name).set(self._queue.qsize())
        return futures

    # --- batching task ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.cancel()

    async def _run(self) -> None:
        while True:
            items = await self._collect()
            for batch in self._cut(self._live(items)):
                await self._forward(batch)

    async def _collect(self) -> list[_Pending]:
        """Wait for one sequence, then gather more until the batch is full or max_wait_ms passed."""
        items = [await self._queue.get()]
        deadline = time.perf_counter() + self.config.max_wait_ms / 1000
        while len(items) < self.config.max_batch_size:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        self.metrics.queue_depth.labels(self.name).set(self._queue.qsize())
        return items

    def _live(self, items: list[_Pending]) -> list[_Pending]:
        """Drop sequences whose request was cancelled (client gone) or whose deadline passed."""
        now, live = time.monotonic(), []
        for item in items:
            if item.future.done():
                self.metrics.rejected.labels("cancelled").inc()
            elif item.deadline < now:
                item.future.set_exception(DeadlineExceeded("request deadline passed while queued"))
                self.metrics.rejected.labels("deadline").inc()
            else:
                live.append(item)
        return live

    def _cut(self, items: list[_Pending]) -> list[list[_Pending]]:
        """Sort by length (less padding) and split so each batch stays under max_batch_tokens padded."""
        batches: list[list[_Pending]] = []
        current: list[_Pending] = []
        for item in sorted(items, key=lambda p: len(p.payload)):
            padded = len(item.payload) * (len(current) + 1)  # sorted: this one is the longest so far
            if current and padded > self.config.max_batch_tokens:
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        return batches

    async def _forward(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        for item in batch:
            self.metrics.queue_wait.labels(self.name).observe(started - item.enqueued)
        self.metrics.batch_size.labels(self.name).observe(len(batch))
        self.metrics.batch_tokens.labels(self.name).observe(len(batch) * max(len(p.payload) for p in batch))
        loop = asyncio.get_running_loop()
        try:
            probs = await loop.run_in_executor(self.executor, self.predict, [p.payload for p in batch])
        except Exception as exc:  # a failed forward pass fails its requests, not the batcher
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self.metrics.inference_duration.labels(self.name).observe(elapsed)
        for item, p in zip(batch, probs):
            if not item.future.done():
                item.future.set_result(p)
