"""The batcher alone: continuous (no wait on an idle device), cuts by size and token budget; drops cancelled
and late work; bounded."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.engine.batcher import BatchConfig, Batcher, DecodeBatcher, PipelinedBatcher
from service.errors import DeadlineExceeded, EngineDead, Overloaded, ShuttingDown, TooLarge
from service.http.error_mapping import http_headers, http_status
from service.metrics import Metrics
from service.settings import Settings


class Recorder:
    def __init__(self, delay: float = 0.0):
        self.batches: list[list[int]] = []
        self.delay = delay

    def __call__(self, batch):
        self.batches.append([len(x) for x in batch])
        time.sleep(self.delay)
        return [sum(x) for x in batch]


def make(predict, **kw) -> Batcher:
    """A batcher with the service's default knobs, overridden by `kw`."""
    defaults = Settings()
    knobs = {name: kw[name] if name in kw else getattr(defaults, name) for name in BatchConfig.__dataclass_fields__
             if name in kw or hasattr(defaults, name)}
    return Batcher("m", predict, BatchConfig(**knobs), ThreadPoolExecutor(1), Metrics())


def far() -> float:
    return time.monotonic() + 60


def test_full_batches_go_at_max_batch_size():
    async def go():
        rec = Recorder()
        b = make(rec, max_batch_size=4, max_wait_ms=1000)
        b.start()
        futures = b.submit([[1]] * 8, far())
        results = await asyncio.wait_for(asyncio.gather(*futures), 2)  # well before max_wait_ms twice
        await b.stop()
        return rec, results

    rec, results = asyncio.run(go())
    assert [len(x) for x in rec.batches] == [4, 4] and results == [1] * 8


def test_a_lone_request_on_an_idle_engine_starts_its_pass_at_once():
    """Continuous batching: no timer when the device is idle. Measured from submit to the runner's
    predict being called, with the default knobs (max_wait_ms 5); the median of several trials, so a
    loaded machine's occasional slow thread wake-up does not decide it."""
    called: list[float] = []

    def predict(batch):
        called.append(time.perf_counter())
        return [0] * len(batch)

    async def go():
        b = make(predict)
        b.start()
        delays = []
        for _ in range(15):
            await asyncio.sleep(0.01)  # the batcher is idle again, awaiting the queue
            t0 = time.perf_counter()
            await asyncio.gather(*b.submit([[1, 2]], far()))
            delays.append(called[-1] - t0)
        await b.stop()
        return sorted(delays)

    delays = asyncio.run(go())
    assert delays[len(delays) // 2] < 0.001, delays


def test_requests_gather_while_a_pass_runs():
    """What arrives during a forward pass forms the next batch, launched as soon as the pass ends."""
    async def go():
        rec = Recorder(delay=0.2)
        b = make(rec, max_batch_size=8)
        b.start()
        first = b.submit([[1]], far())
        await asyncio.sleep(0.05)  # the first pass is running
        later = [b.submit([[2] * 2], far()) for _ in range(3)]
        await asyncio.gather(*first, *[f for fs in later for f in fs])
        await b.stop()
        return rec

    assert asyncio.run(go()).batches == [[1], [2, 2, 2]]


@pytest.mark.parametrize("packed, expected", [(True, [[2, 3, 20], [20]]),  # real tokens: 25 and 20
                                               (False, [[2, 3], [20, 20]])])  # padded: 6 and 40
def test_token_budget_splits_and_sorting_groups_similar_lengths(packed, expected):
    async def go():
        rec = Recorder()
        b = make(rec, max_batch_size=8, max_batch_tokens=40, max_wait_ms=50, packed=packed)
        b.start()
        seqs = [[1] * 20, [1] * 2, [1] * 20, [1] * 3]
        results = await asyncio.gather(*b.submit(seqs, far()))
        await b.stop()
        return rec, results, b.metrics

    rec, results, metrics = asyncio.run(go())
    assert rec.batches == expected  # within 40 tokens each, counted as the passes compute them
    assert results == [20, 2, 20, 3]  # each future gets its own result, in request order
    # dhrd_batch_tokens counts as the budget does: packed 25 + 20 real tokens, padded 2x3 + 2x20
    observed = metrics.registry.get_sample_value("dhrd_batch_tokens_sum", {"model": "m"})
    assert observed == (45 if packed else 46)


def test_queue_is_bounded():
    async def go():
        b = make(Recorder(), max_queue=3)  # not started: nothing drains
        b.submit([[1], [1]], far())
        with pytest.raises(Overloaded) as info:
            b.submit([[1], [1]], far())
        await b.stop()
        return info.value

    err = asyncio.run(go())
    assert http_status(err) == 429 and int(http_headers(err)["Retry-After"]) >= 1


def test_cancelled_and_expired_requests_cost_no_forward_pass():
    async def go():
        rec = Recorder()
        b = make(rec, max_batch_size=8, max_wait_ms=20)
        gone = b.submit([[9] * 5], far())
        late = b.submit([[7] * 4], time.monotonic() - 1)
        live = b.submit([[1]], far())
        gone[0].cancel()  # the client disconnected
        b.start()
        result = await asyncio.gather(*live)
        with pytest.raises(DeadlineExceeded):
            await late[0]
        await b.stop()
        return rec, result

    rec, result = asyncio.run(go())
    assert rec.batches == [[1]] and result == [1]


def test_a_failing_forward_fails_its_requests_not_the_batcher():
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [0] * len(batch)

    async def go():
        b = make(flaky, max_wait_ms=0)
        b.start()
        with pytest.raises(RuntimeError):
            await asyncio.gather(*b.submit([[1]], far()))
        ok = await asyncio.gather(*b.submit([[1]], far()))
        await b.stop()
        return ok

    assert asyncio.run(go()) == [0]


def test_cancelled_requests_stop_counting_against_the_queue_at_once():
    """A burst whose clients gave up (deadline, disconnect) must not leave the queue 'full' of dead work."""
    async def go():
        b = make(Recorder(), max_queue=4)  # not started: nothing is ever taken from the queue
        dead = b.submit([[1]] * 4, far())
        for f in dead:
            f.cancel()
        await asyncio.sleep(0)  # done-callbacks run on the next loop iteration
        live = b.submit([[1]] * 4, far())  # would be 429 if the dead ones still counted
        depth = b.metrics.queue_depth.labels("m")._value.get()
        await b.stop()
        return live, depth

    live, depth = asyncio.run(go())
    assert len(live) == 4 and depth == 4


def test_a_request_that_can_never_fit_is_413_not_a_retryable_429():
    async def go():
        b = make(Recorder(), max_queue=16)
        with pytest.raises(TooLarge) as info:
            b.submit([[1]] * 17, far())
        await b.stop()
        return info.value

    err = asyncio.run(go())
    assert http_status(err) == 413 and "Retry-After" not in http_headers(err)


def test_expiry_is_checked_before_every_batch_of_a_round():
    """Batches cut from one collection run one after another; a deadline passing during the first
    must spare the later ones their forward pass."""
    async def go():
        rec = Recorder(delay=0.3)
        b = make(rec, max_batch_size=8, max_batch_tokens=4, max_wait_ms=50)
        first = b.submit([[1] * 4], far())
        short = b.submit([[2] * 4], time.monotonic() + 0.15)  # a batch of its own, after the first
        b.start()
        await asyncio.gather(*first)
        with pytest.raises(DeadlineExceeded):
            await short[0]
        await b.stop()
        return rec

    assert len(asyncio.run(go()).batches) == 1


def test_drain_finishes_queued_work_then_answers_the_rest_503():
    async def go():
        rec = Recorder(delay=0.1)
        b = make(rec, max_batch_size=1, max_wait_ms=0)
        b.start()
        futures = b.submit([[1]] * 6, far())
        await asyncio.sleep(0.05)
        failed = await b.drain(grace_s=0.25)  # room for ~2-3 of the 6 passes
        with pytest.raises(ShuttingDown):
            b.submit([[1]], far())
        await b.stop()
        outcomes = [("ok" if not f.exception() else type(f.exception()).__name__) if f.done() else "pending"
                    for f in futures]
        return failed, outcomes

    failed, outcomes = asyncio.run(go())
    assert "pending" not in outcomes and outcomes.count("ShuttingDown") == failed >= 1
    assert outcomes[:2] == ["ok", "ok"]


def test_work_that_would_wait_past_its_deadline_is_refused_at_once_not_left_to_time_out():
    """Under overload the queue is honest: a request that cannot be reached before its deadline gets a
    retryable 429 now, and the forward passes go to requests that can still finish (goodput)."""
    async def go():
        rec = Recorder(delay=0.1)
        b = make(rec, max_batch_size=1, max_wait_ms=0, max_queue=100)
        b.start()
        await asyncio.gather(*b.submit([[1]], far()))  # one pass: the batcher learns its cost
        outcomes = []
        for _ in range(10):  # each with 0.35 s to live: only the first few can be reached in time
            try:
                outcomes.append(b.submit([[1]], time.monotonic() + 0.35)[0])
            except Overloaded:
                outcomes.append("429")
        results = await asyncio.gather(*[f for f in outcomes if f != "429"], return_exceptions=True)
        await b.stop()
        return outcomes.count("429"), results

    refused, results = asyncio.run(go())
    assert refused >= 5
    assert all(r == 1 for r in results)  # everything admitted was computed in time: no 504s


# --- pipelining (CUDA graphs: launch returns at once, a second thread waits for the device) -------------
class Device:
    """A fake asynchronous device: `launch` records and returns at once; results come when released."""

    def __init__(self, fail_on: int | None = None):
        import threading

        self.launched: list[int] = []
        self.finished: list[int] = []
        self.release = threading.Event()
        self.fail_on = fail_on

    def launch(self, batch):
        n = len(self.launched)
        self.launched.append(len(batch))
        device = self

        class Pending:
            def result(self):
                device.release.wait(5)
                device.finished.append(n)
                if n == device.fail_on:
                    raise RuntimeError("device fault")
                return [sum(x) * 10 for x in batch]

        return Pending()


def pipelined(device, **kw) -> Batcher:
    defaults = Settings()
    knobs = {name: kw[name] if name in kw else getattr(defaults, name) for name in BatchConfig.__dataclass_fields__
             if name in kw or hasattr(defaults, name)}
    return PipelinedBatcher("m", device.launch, ThreadPoolExecutor(1), BatchConfig(**knobs), ThreadPoolExecutor(1),
                            Metrics())


def test_pipelined_batches_launch_the_next_one_before_the_last_finished():
    async def go():
        device = Device()
        b = pipelined(device, max_batch_size=2, max_wait_ms=1)
        b.start()
        futures = b.submit([[1], [2], [3], [4], [5], [6]], far())
        await asyncio.sleep(0.3)
        in_flight = (list(device.launched), list(device.finished))
        device.release.set()
        results = await asyncio.wait_for(asyncio.gather(*futures), 5)
        await b.stop()
        return in_flight, results

    (launched, finished), results = asyncio.run(go())
    assert launched == [2, 2] and finished == []  # two batches on the device, the third waits: depth 2
    assert results == [10, 20, 30, 40, 50, 60]


def test_a_device_fault_fails_only_its_batch():
    async def go():
        device = Device(fail_on=0)
        device.release.set()
        b = pipelined(device, max_batch_size=2, max_wait_ms=1)
        b.start()
        first = b.submit([[1], [2]], far())
        await asyncio.sleep(0.2)
        second = b.submit([[3], [4]], far())
        out = await asyncio.gather(*first, *second, return_exceptions=True)
        await b.stop()
        return out

    out = asyncio.run(go())
    assert all(isinstance(x, RuntimeError) for x in out[:2]) and out[2:] == [30, 40]


def test_while_the_device_is_busy_arrivals_gather_for_at_most_max_wait_ms():
    """Pipelined: a batch still on the device is the one case a launch may wait, and only max_wait_ms."""
    async def go():
        device = Device()
        b = pipelined(device, max_batch_size=8, max_wait_ms=100)
        b.start()
        first = b.submit([[1]], far())
        await asyncio.sleep(0.05)
        launched_idle = list(device.launched)  # the device was idle: launched at once
        second = b.submit([[2]], far())
        await asyncio.sleep(0.03)
        gathering = list(device.launched)  # the first batch runs: the second gathers company
        await asyncio.sleep(0.3)
        capped = list(device.launched)  # max_wait_ms passed: launched behind the first
        device.release.set()
        results = await asyncio.wait_for(asyncio.gather(*first, *second), 5)
        await b.stop()
        return launched_idle, gathering, capped, results

    launched_idle, gathering, capped, results = asyncio.run(go())
    assert launched_idle == [1] and gathering == [1] and capped == [1, 1] and results == [10, 20]


# --- fatal device errors (a dead CUDA context) against ordinary per-batch failures -------------------
def failing_with(message: str):
    def predict(batch):
        raise RuntimeError(message)
    return predict


@pytest.mark.parametrize("message", ["CUDA error: an illegal memory access was encountered",
                                     "CUDA error: device-side assert triggered"])
def test_a_fatal_device_error_answers_engine_dead_and_tells_the_engine(message):
    async def go():
        fatal: list[BaseException] = []
        b = Batcher("m", failing_with(message), make(Recorder()).config, ThreadPoolExecutor(1), Metrics(),
                    on_fatal=fatal.append)
        b.start()
        out = await asyncio.gather(*b.submit([[1]], far()), return_exceptions=True)
        await b.stop()
        return fatal, out

    fatal, out = asyncio.run(go())
    assert len(fatal) == 1 and isinstance(out[0], EngineDead)


def test_an_ordinary_forward_error_fails_its_batch_only():
    async def go():
        fatal: list[BaseException] = []
        b = Batcher("m", failing_with("mat1 and mat2 shapes cannot be multiplied"), make(Recorder()).config,
                    ThreadPoolExecutor(1), Metrics(), on_fatal=fatal.append)
        b.start()
        out = await asyncio.gather(*b.submit([[1]], far()), return_exceptions=True)
        await b.stop()
        return fatal, out

    fatal, out = asyncio.run(go())
    assert fatal == [] and type(out[0]) is RuntimeError


def test_generation_still_gathers_for_max_wait_ms_on_an_idle_device():
    """A CoT batch decodes for seconds and cannot take requests mid-pass: its batcher waits to fill."""
    async def go():
        rec = Recorder()
        b = DecodeBatcher("m:cot", lambda batch, gone: rec(batch), make(rec, max_batch_size=8, max_wait_ms=100).config,
                          ThreadPoolExecutor(1), Metrics())
        b.start()
        first = b.submit([[1]], far())
        await asyncio.sleep(0.03)
        second = b.submit([[2]], far())
        await asyncio.gather(*first, *second)
        await b.stop()
        return rec

    assert asyncio.run(go()).batches == [[1, 1]]


# --- the torch thread: a long job (a decode) runs the short ones (classification) between its steps ---------
def test_the_torch_thread_runs_short_jobs_between_a_long_jobs_steps_never_a_long_one():
    from service.engine.torch_thread import TorchThread

    thread, log = TorchThread("test-fwd"), []
    step_reached, release = __import__("threading").Event(), __import__("threading").Event()

    def decode(name):
        log.append(f"{name} starts")
        step_reached.set()
        release.wait(5)
        for _ in range(2):
            ran = thread.between_steps()
            log.append(f"{name} step, ran {ran}")
        return name

    first = thread.submit_long(decode, "decode 1")
    step_reached.wait(5)
    second = thread.submit_long(decode, "decode 2")  # queued before the short jobs: still runs after decode 1
    shorts = [thread.submit(log.append, f"classify {i}") for i in range(2)]
    release.set()
    assert [f.result(5) for f in (first, second, *shorts)] == ["decode 1", "decode 2", None, None]
    thread.shutdown()
    assert log[:4] == ["decode 1 starts", "classify 0", "classify 1", "decode 1 step, ran 2"]
    assert log[4:] == ["decode 1 step, ran 0", "decode 2 starts", "decode 2 step, ran 0", "decode 2 step, ran 0"]


def test_a_generation_batcher_stops_asking_once_every_caller_left():
    """The batcher's `gone` says which callers left; a decode that sees all gone stops (cot.py)."""
    from service.engine.torch_thread import TorchThread

    seen: list[list[bool]] = []

    def decode(batch, gone):
        for _ in range(200):
            seen.append(gone())
            if all(seen[-1]):
                return [RuntimeError("cut short")] * len(batch)
            time.sleep(0.005)
        return [1] * len(batch)

    async def go():
        thread = TorchThread("t")
        b = DecodeBatcher("m:cot", decode, make(Recorder(), max_batch_size=2, max_wait_ms=0).config, thread, Metrics())
        b.start()
        futures = b.submit([[1], [2]], far())
        while not seen:
            await asyncio.sleep(0.005)
        futures[0].cancel()
        await asyncio.sleep(0.05)
        futures[1].cancel()
        await asyncio.sleep(0.05)
        await b.stop()
        thread.shutdown()

    asyncio.run(go())
    assert seen[0] == [False, False] and [False, False] in seen and [True, False] in seen
    assert seen[-1] == [True, True] and len(seen) < 60


class Stall:
    """A forward pass that takes `stall` seconds once (a VM pause, SIGSTOP, a GPU hiccup), else `delay`."""

    def __init__(self, stall: float, delay: float = 0.005, at: int = 1):
        self.stall, self.delay, self.at, self.calls = stall, delay, at, 0

    def __call__(self, batch):
        time.sleep(self.stall if self.calls == self.at else self.delay)
        self.calls += 1
        return [sum(x) for x in batch]


def test_one_long_pass_does_not_make_every_later_request_time_out():
    """Issue 32, item 1: one pass ~7x the request deadline used to push the pass-time estimate past every
    deadline; every new sequence was then dropped before a pass ran, so no pass ran again and the model
    answered 504 forever. After the stall, requests with the same short deadline are served again."""
    async def go():
        b = make(Stall(stall=1.4), max_wait_ms=0)
        b.start()
        await asyncio.gather(*b.submit([[1]], far()))  # a normal pass
        await asyncio.gather(*b.submit([[1]], far()))  # the stall
        served = []
        for _ in range(10):
            try:
                served += await asyncio.wait_for(asyncio.gather(*b.submit([[2]], time.monotonic() + 0.2)), 1)
            except DeadlineExceeded:
                served.append("504")
        await b.stop()
        return served

    assert asyncio.run(go()) == [2] * 10


def test_the_first_sequence_of_a_pass_is_never_dropped_by_the_estimate_alone():
    """Even when the estimate says the pass would end past its deadline (here: the first pass ever was
    slow), a sequence with nothing ahead of it is computed; its own deadline still drops it once passed."""
    async def go():
        b = make(Stall(stall=0.5, at=0), max_wait_ms=0)
        b.start()
        await asyncio.gather(*b.submit([[1]], far()))  # the estimate is now 0.5 s
        result = await asyncio.gather(*b.submit([[3]], time.monotonic() + 0.3))
        await b.stop()
        return result

    assert asyncio.run(go()) == [3]


def test_a_batcher_with_work_and_no_finished_pass_reports_the_stall_until_a_pass_ends():
    import threading

    release = threading.Event()

    def predict(batch):
        if len(batch[0]) == 2:
            release.wait(5)  # stuck until released
        return [0] * len(batch)

    async def go():
        b = make(predict, max_wait_ms=0)
        b.start()
        await asyncio.gather(*b.submit([[1]], far()))  # learns a fast pass
        assert b.stalled_for(0.2) == 0.0  # idle: never stalled
        stuck = b.submit([[1, 1]], far())
        await asyncio.sleep(0.1)
        assert b.stalled_for(0.2) == 0.0  # working, not yet past the limit
        await asyncio.sleep(0.3)
        assert b.stalled_for(0.2) > 0.35
        release.set()
        await asyncio.gather(*stuck)
        assert b.stalled_for(0.2) == 0.0
        await b.stop()

    asyncio.run(go())
