"""Continuous batching: a bounded queue per model, cut into batches by size and padded tokens; an idle
device takes a request at once, and requests gather only while a forward pass runs.

Three stages, as in text-embeddings-inference: the handler validates, tokenises and `submit`s
(awaiting futures); this batcher's task collects sequences and cuts batches; the forward pass
runs in one worker thread shared by all models (the CPU has no spare cores for two). Requests
whose client went away, or whose deadline passed, are dropped before they cost a forward pass,
and stop counting against `max_queue` the moment their future is cancelled.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Sized

from ..errors import DeadlineExceeded, EngineDead, Overloaded, ShuttingDown, TooLarge, is_fatal_device_error
from ..metrics import Metrics

# A payload is anything whose len() is its token count: a list of token ids for classification,
# a `cot.CotItem` for generation. The predict function returns one result per payload; a result that is
# an Exception fails that payload's request only.
PredictFn = Callable[[Sequence[Sized]], list[Any]]
# A launch function starts a forward pass on an asynchronous device and returns at once; the object it
# returns has `.result()`, which waits for the device and returns one result per payload.
LaunchFn = Callable[[Sequence[Sized]], Any]
# A decode function (generation, `decode=True`) also takes `step`: it calls step() on the torch thread
# between its decode steps, which runs the short work waiting for that thread (`TorchThread.between_steps`)
# and returns, per payload, whether its caller has left (cancelled, or past its deadline).
DecodeFn = Callable[[Sequence[Sized], Callable[[], list[bool]]], list[Any]]
PIPELINE_DEPTH = 2  # batches launched and not yet finished: N runs on the device while N+1 is prepared
# One pass may raise the pass-time estimates at most this many times over: a single stalled pass (a VM
# pause, SIGSTOP, a GPU hiccup) must not teach the batcher that every deadline is unreachable, while a
# real slowdown is still learned within a few passes (x1.6 a pass at the EWMA's 0.2 weight).
ESTIMATE_GROWTH_CAP = 4.0
# A model with work waiting and no pass finished for this many of its usual pass times (and at least the
# service's stall timeout) is stuck: readiness turns 503 until a pass finishes.
STALL_PASSES = 4.0


@dataclass
class BatchConfig:
    """The batching knobs; their defaults live in `Settings` (http/state.py builds this from it)."""

    max_batch_size: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queue: int
    # What max_batch_tokens counts: the real tokens of packed passes (device/runner.py: what they compute), or
    # count x longest for a model that runs padded (compiled, or a backbone packing cannot run).
    packed: bool = True


@dataclass
class _Pending:
    payload: Sized
    future: asyncio.Future
    deadline: float
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True  # counts against max_queue until taken for a batch or finished


def budget_tokens(count: int, longest: int, real: int, packed: bool) -> int:
    """What a pass of `count` sequences costs as max_batch_tokens counts it: its `real` tokens when passes
    are packed, count x longest when padded. The one rule for cutting batches and for dhrd_batch_tokens."""
    return real if packed else count * longest


def cut_round(lengths: Sequence[int], max_batch_tokens: int, packed: bool) -> list[list[int]]:
    """How one round of queued sequences (at most max_batch_size, taken in arrival order) is cut into
    forward passes: sorted by length (so a padded pass carries less padding), then split so each pass
    stays within max_batch_tokens as `budget_tokens` counts it (real tokens packed, count x longest
    padded). Returns indices into `lengths`. The service's one rule, also what `loadtest.forward packing` runs."""
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):  # stable: equal lengths keep their order
        n = lengths[i]
        if current and budget_tokens(len(current) + 1, n, real + n, packed) > max_batch_tokens:  # n is the longest
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += n
    return batches + ([current] if current else [])


def rounds(count: int, max_batch_size: int) -> list[range]:
    """The rounds a saturated batcher takes `count` queued sequences in: consecutive, max_batch_size each."""
    return [range(start, min(start + max_batch_size, count)) for start in range(0, count, max_batch_size)]


class Batcher:
    """A model's queue and its forward passes, one at a time on the torch thread: continuous batching of
    classification. Two kinds differ in how a round is gathered and computed: `PipelinedBatcher` (CUDA
    graphs) and `DecodeBatcher` (CoT generation); each overrides `_gathers` and `_compute`."""

    def __init__(self, name: str, predict: PredictFn, config: BatchConfig, executor: Executor, metrics: Metrics,
                 on_fatal: Callable[[BaseException], None] | None = None):
        self.name = name
        # Called once a forward pass raises a fatal device error: the engine must then stop (core.py).
        self.on_fatal = on_fatal
        self.predict = predict
        self._finishing: set[asyncio.Task] = set()  # passes still on the device (PipelinedBatcher only)
        self.config = config
        self.executor = executor
        self.metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._arrived = asyncio.Event()  # set by submit; waiting on it (not on queue.get) loses nothing on timeout
        self._task: asyncio.Task | None = None
        self._waiting = 0  # live queued sequences: what admission and the queue gauge count
        self._computing = 0  # sequences in the batch(es) being computed now
        self._held: list[_Pending] = []  # taken from the queue this round (collected or being computed)
        self._closed = False
        # Running estimates of one forward pass and of its cost per sequence: what admission and the
        # pre-pass check use to tell whether work can still finish before its deadline.
        self._batch_seconds = 0.05
        self._sequence_seconds = 0.0
        self._passes = 0
        # When a pass last finished (or work arrived at an idle batcher): how long it has been stuck.
        self._progress = time.monotonic()
        self._depth = metrics.queue_depth.labels(name)  # set twice per sequence: keep the child, not a lookup each

    # --- handler side -----------------------------------------------------------------------
    def submit(self, sequences: Sequence[Sized], deadline: float) -> list[asyncio.Future]:
        """Queue sequences (all or none); returns one future per sequence.

        Raises TooLarge when the request could never fit the queue, Overloaded (retryable) when the
        live queue is full now, ShuttingDown once the service drains.
        """
        n = len(sequences)
        self.admit(n, deadline)
        if not self.busy:
            self._progress = time.monotonic()  # an idle batcher is not stuck: the clock starts with its work
        loop = asyncio.get_running_loop()
        futures = []
        for payload in sequences:
            pending = _Pending(payload, loop.create_future(), deadline)
            pending.future.add_done_callback(lambda _, p=pending: self._unqueue(p))
            self._queue.put_nowait(pending)
            futures.append(pending.future)
        self._waiting += n
        self._arrived.set()
        self._gauge()
        return futures

    async def run(self, sequences: Sequence[Sized], deadline: float) -> list[Any]:
        """Queue sequences and wait for all their results, by `deadline` (monotonic) or DeadlineExceeded."""
        return await wait_all(self.submit(sequences, deadline), deadline)

    def admit(self, n: int, deadline: float) -> None:
        """Whether `n` sequences due by `deadline` may be queued now; cheap, so handlers call it before
        tokenising too (a refusal should cost as little as possible). Raises as `submit` does."""
        if self._closed:
            raise ShuttingDown(f"model {self.name!r} is shutting down; retry on another replica")
        if n > self.config.max_queue:
            raise TooLarge(f"{n} inputs can never fit model {self.name!r}'s queue of {self.config.max_queue} "
                           "sequences; send fewer per request", field="input")
        wait = self.expected_wait(n)
        if self._waiting + n > self.config.max_queue:
            raise Overloaded(f"model {self.name!r} queue is full ({self._waiting} of {self.config.max_queue} "
                             "sequences waiting); retry later", retry_after=wait)
        if self._waiting and 0 < deadline - time.monotonic() < wait:  # (a past deadline is a 504, below)
            # An honest queue: work that would wait past its deadline is refused now, retryably, rather
            # than queued to time out; under overload the passes go to requests that can still finish.
            raise Overloaded(f"model {self.name!r} would reach this request in ~{wait:.1f} s, past its deadline "
                             f"({self._waiting} sequences waiting); retry later", retry_after=wait)

    def expected_wait(self, n: int) -> float:
        """Seconds until `n` more sequences would be computed: the queue ahead of them, then their pass."""
        return (self._waiting + self._computing + n) * self._sequence_seconds + self._batch_seconds

    @property
    def busy(self) -> bool:
        return bool(self._waiting or self._computing)

    def stalled_for(self, limit: float) -> float:
        """Seconds this batcher has had work and finished no pass, when that exceeds `limit` and several
        usual pass times; else 0. A generation batcher's decodes are long by nature: never stalled."""
        if not self.busy or not self._passes:
            return 0.0
        stuck = time.monotonic() - self._progress
        return stuck if stuck > max(limit, STALL_PASSES * self._batch_seconds) else 0.0

    def _unqueue(self, item: _Pending) -> None:
        """The sequence stops counting against max_queue (taken for a batch, cancelled, or expired)."""
        if item.queued:
            item.queued = False
            self._waiting -= 1
            self._gauge()

    def _gauge(self) -> None:
        self._depth.set(self._waiting)

    # --- batching task ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def drain(self, grace_s: float) -> int:
        """Refuse new work, let queued and running work finish for up to `grace_s`, then answer what is
        left with ShuttingDown (503). Returns how many sequences were answered that way."""
        self._closed = True
        end = time.monotonic() + grace_s
        while (self._waiting or self._computing) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return self._fail_queued(ShuttingDown("the service is shutting down and could not compute this request "
                                              "within its grace period; retry on another replica"))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._fail_queued(ShuttingDown("the service stopped before this request was computed"))

    def _fail_queued(self, error: Exception) -> int:
        """Answer every sequence not yet computed (queued or held by a cancelled round) with `error`."""
        left = list(self._held)
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        failed = 0
        for item in left:
            if not item.future.done():
                item.future.set_exception(error)
                failed += 1
        return failed

    async def _run(self) -> None:
        while True:
            self._held = []  # filled as it is collected, so stop() can answer a round cut short
            await self._collect(self._held)
            for batch in self._cut(self._held):
                batch = self._live(batch)  # checked again per batch: earlier batches of the round took time
                if batch:
                    await self._forward(batch)

    async def _collect(self, items: list[_Pending]) -> None:
        """Wait for one live sequence, then take what is already queued into `items`, up to max_batch_size.

        Continuous batching (TEI, vLLM): an idle device never waits for company, since a timer there only
        adds latency; requests gather while a pass runs, because the batcher is busy awaiting it. Where
        `_gathers()` says so, arrivals also gather for up to max_wait_ms, until the batch is full.
        """
        while not items:
            items += self._live([await self._queue.get()])
        self._take_queued(items)
        if self._gathers() and len(items) < self.config.max_batch_size:
            await self._gather(items)
        for item in items:
            self._unqueue(item)

    def _take_queued(self, items: list[_Pending]) -> None:
        while len(items) < self.config.max_batch_size and not self._queue.empty():
            items += self._live([self._queue.get_nowait()])

    def _gathers(self) -> bool:
        """Whether a round still waits for arrivals (up to max_wait_ms) before it is cut: never here."""
        return False

    async def _gather(self, items: list[_Pending]) -> None:
        """Let arrivals join the next batch for at most max_wait_ms while `_gathers()` holds; stop when full."""
        deadline = time.perf_counter() + self.config.max_wait_ms / 1000
        while self._gathers() and len(items) < self.config.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._arrived.clear()
            arrival = asyncio.ensure_future(self._arrived.wait())
            await asyncio.wait({arrival, *self._finishing}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()
            self._take_queued(items)

    def _live(self, items: list[_Pending]) -> list[_Pending]:
        """Drop sequences whose request was cancelled (client gone) or that cannot finish before their
        deadline: a pass for them would be wasted, and under overload it is what starves the rest.
        The pass-time estimate never drops the first live sequence (nothing is ahead of it): only its
        own deadline can. Otherwise an estimate inflated past every deadline would drop all work, no
        pass would run again, and the estimate would never come down."""
        now = time.monotonic()
        finish, live = now + self._batch_seconds, []
        for item in items:
            if item.future.done():
                self.metrics.dropped.labels(self.name, "cancelled").inc()
            elif item.deadline <= now or (live and item.deadline < finish):
                item.future.set_exception(DeadlineExceeded("request deadline would pass before its forward pass ended"))
                self.metrics.dropped.labels(self.name, "deadline").inc()
            else:
                live.append(item)
        return live

    def _budget_tokens(self, batch: list[_Pending]) -> int:
        """A batch's tokens as max_batch_tokens counts them (a graph replay's bucket tail is in
        dhrd_computed_tokens_total)."""
        lengths = [len(p.payload) for p in batch]
        return budget_tokens(len(lengths), max(lengths), sum(lengths), self.config.packed)

    def _cut(self, items: list[_Pending]) -> list[list[_Pending]]:
        return [[items[i] for i in batch] for batch in cut_round([len(p.payload) for p in items],
                                                                  self.config.max_batch_tokens, self.config.packed)]

    async def _forward(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        for item in batch:
            self.metrics.queue_wait.labels(self.name).observe(started - item.enqueued)
        self.metrics.batch_size.labels(self.name).observe(len(batch))
        self.metrics.batch_tokens.labels(self.name).observe(self._budget_tokens(batch))
        await self._compute(batch, started)

    async def _compute(self, batch: list[_Pending], started: float) -> None:
        """One forward pass on the torch thread; its results (or its failure) go to the batch's futures."""
        self._computing = len(batch)
        try:
            results = await self._run_pass(batch)
        except Exception as exc:  # a failed forward pass fails its requests, not the batcher
            self._fail(batch, self._failure(exc))
            return
        finally:
            self._computing = 0
        self._done(batch, results, started)

    async def _run_pass(self, batch: list[_Pending]) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.predict,
                                                                [p.payload for p in batch])

    def _failure(self, exc: Exception) -> Exception:
        """What a failed pass's requests are answered with. An ordinary error is that batch's alone; a
        fatal device error (the CUDA context is dead, every later pass would fail too) kills the engine."""
        if not is_fatal_device_error(exc):
            return exc
        if self.on_fatal is not None:
            self.on_fatal(exc)
        return EngineDead("the accelerator failed and the engine is stopping; retry on another replica")

    def _learn(self, elapsed: float, count: int) -> None:
        """Fold one pass into the running estimates (EWMA); one pass raises them at most
        ESTIMATE_GROWTH_CAP-fold, so a single stall is an outlier, not the new normal."""
        if not self._passes:  # the first pass replaces the start-up guesses
            self._batch_seconds, self._sequence_seconds = elapsed, elapsed / count
        else:
            batch = min(elapsed, ESTIMATE_GROWTH_CAP * self._batch_seconds)
            sequence = min(elapsed / count, ESTIMATE_GROWTH_CAP * max(self._sequence_seconds, 1e-6))
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * batch
            self._sequence_seconds = 0.8 * self._sequence_seconds + 0.2 * sequence
        self._passes += 1

    def kill(self, error: Exception) -> int:
        """Refuse new work and answer everything not yet computed with `error`; the engine is dying."""
        self._closed = True
        return self._fail_queued(error)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        self._progress = time.monotonic()  # a failed pass ended too: the device answers
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _done(self, batch: list[_Pending], results: list[Any], started: float) -> None:
        elapsed = time.perf_counter() - started
        self._progress = time.monotonic()
        self._learn(elapsed, len(batch))
        self.metrics.inference_duration.labels(self.name).observe(elapsed)
        for item, result in zip(batch, results):
            if not item.future.done():
                if isinstance(result, Exception):  # this sequence failed alone (a CoT group's parameters)
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)



class PipelinedBatcher(Batcher):
    """CUDA graphs: batch N+1 is packed, copied and launched while batch N still runs on the device;
    `finisher` (its own thread) waits for each batch's results. While a batch is still on the device,
    arrivals gather for up to max_wait_ms (stopping early when the device has none left)."""

    def __init__(self, name: str, launch: LaunchFn, finisher: Executor, config: BatchConfig, executor: Executor,
                 metrics: Metrics, on_fatal: Callable[[BaseException], None] | None = None):
        super().__init__(name, launch, config, executor, metrics, on_fatal)
        self.launch, self.finisher = launch, finisher

    def _gathers(self) -> bool:
        return bool(self._finishing)

    async def _compute(self, batch: list[_Pending], started: float) -> None:
        """Launch this batch, hand its completion to the finisher thread, and return to collect the next
        one; at most PIPELINE_DEPTH batches are in flight."""
        loop = asyncio.get_running_loop()
        while len(self._finishing) >= PIPELINE_DEPTH:
            await asyncio.wait(self._finishing, return_when=asyncio.FIRST_COMPLETED)
        self._computing += len(batch)
        try:
            pending = await loop.run_in_executor(self.executor, self.launch, [p.payload for p in batch])
        except Exception as exc:
            self._computing -= len(batch)
            self._fail(batch, self._failure(exc))
            return
        task = asyncio.create_task(self._finish(batch, pending, started))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, batch: list[_Pending], pending: Any, started: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.finisher, pending.result)
        except Exception as exc:
            self._fail(batch, self._failure(exc))
            return
        finally:
            self._computing -= len(batch)
        self._done(batch, results, started)


class DecodeBatcher(Batcher):
    """CoT generation: `predict` is a DecodeFn, run as a long job that yields the torch thread between
    decode steps and stops once every caller in its batch has left (issue 23, item 9). A static batch
    decodes for seconds, so a request that started alone would hold every later one for a whole decode:
    this batcher gathers for max_wait_ms on an idle device too. Its passes are long by nature: it never
    reports a stall."""

    def _gathers(self) -> bool:
        return True

    def stalled_for(self, limit: float) -> float:
        return 0.0

    async def _run_pass(self, batch: list[_Pending]) -> list[Any]:
        """Between decode steps the torch thread runs queued classification passes, and `gone` tells the
        decoder which callers have left."""
        def gone() -> list[bool]:
            # On the torch thread: `between_steps` first (it takes time, during which callers may leave).
            # A future is done here only when its caller no longer waits for it (cancelled, failed by a
            # drain or stop); reading its state from this thread is a plain attribute read under the GIL.
            between_steps()
            now = time.monotonic()
            return [p.future.done() or p.deadline <= now for p in batch]

        between_steps = getattr(self.executor, "between_steps", lambda: 0)
        submit = getattr(self.executor, "submit_long", self.executor.submit)
        return await asyncio.wrap_future(submit(self.predict, [p.payload for p in batch], gone))

    def _done(self, batch: list[_Pending], results: list[Any], started: float) -> None:
        if all(item.future.done() for item in batch):
            return  # every caller left, so the decode stopped early: its time would skew the estimates
        super()._done(batch, results, started)


async def wait_all(futures: list[asyncio.Future], deadline: float) -> list:
    """Results of every future, in order. At the deadline, or when the caller is cancelled (client gone),
    the futures are cancelled so the batcher skips them before they cost a forward pass."""
    try:
        done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.CancelledError:
        abandon(futures)
        raise
    if pending:
        abandon(futures)
        raise DeadlineExceeded("no result before the request deadline (request_timeout_s)")
    return outcome(futures)


def outcome(futures: list[asyncio.Future]) -> list:
    """The results of finished futures, in order, or the first failure raised (every other abandoned)."""
    if any(f.cancelled() for f in futures):  # the batcher was stopped under it
        abandon(futures)
        raise ShuttingDown("the service stopped before this request was computed; retry on another replica")
    failed = next((f for f in futures if f.exception() is not None), None)
    if failed is not None:
        abandon(futures)
        raise failed.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def abandon(futures: list[asyncio.Future]) -> None:
    """Cancel what is pending and mark finished failures as seen: an exception nobody retrieves is
    logged by asyncio as an error, and these outcomes (deadline, client gone) are expected."""
    for f in futures:
        if not f.done():
            f.cancel()
        elif not f.cancelled():
            f.exception()
