"""`TorchThread`: the one thread that runs all torch work, where a long job (CoT decoding) lets the short
ones (classification passes) run between its steps.

Why one thread and not a second one for decoding: on CPU each thread that runs torch ops gets an OpenMP
team of its own, and two teams on the same cores fight (the forward ran ~20 % slower with a second team
alive, core.py); on a 2-core machine a classification pass beside a decode would slow both. So the
decode loop yields instead: after each decode step it calls `between_steps()`, which runs, on this same
thread, every short job queued meanwhile. A classification request then waits for at most one decode
step (or the prefill), not for the whole decode (issue 23, item 9: 8.6 s behind an 8 x 120-token batch).
vLLM's engine core likewise schedules its work one step at a time; here the step is what `generate()`
exposes: its stopping-criteria hook, called once per decode step (device/generator.py).
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Executor, Future
from typing import Any, Callable


class _Job:
    __slots__ = ("future", "fn", "args", "kwargs", "long")

    def __init__(self, future: Future, fn: Callable, args: tuple, kwargs: dict, long: bool):
        self.future, self.fn, self.args, self.kwargs, self.long = future, fn, args, kwargs, long

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 -- handed to whoever awaits the future
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class TorchThread(Executor):
    """A one-thread executor (what `ThreadPoolExecutor(1)` was) whose long jobs run short ones between steps.

    `submit` queues a short job; `submit_long` a long one (a decode), which runs only at the top level,
    never inside another long job: two nested decodes would make the outer wait for all of the inner one.
    Jobs otherwise run in the order they were queued.
    """

    def __init__(self, name: str = "dhrd-fwd"):
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._shutdown = False
        self._nested = False  # inside between_steps: a short job does not run others inside itself
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self._put(fn, args, kwargs, long=False)

    def submit_long(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Queue a job that calls `between_steps()` (on this thread) while it runs, e.g. after each decode step."""
        return self._put(fn, args, kwargs, long=True)

    def _put(self, fn: Callable, args: tuple, kwargs: dict, long: bool) -> Future:
        future: Future = Future()
        with self._ready:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after the torch thread was shut down")
            self._jobs.append(_Job(future, fn, args, kwargs, long))
            self._ready.notify()
        return future

    def between_steps(self) -> int:
        """Run the short jobs queued now (a long job calls this between its steps, on this thread);
        long ones stay queued, in order, for the top level. Returns how many jobs ran."""
        if self._nested or threading.current_thread() is not self._thread:
            return 0
        with self._ready:
            short = [job for job in self._jobs if not job.long]
            if not short:
                return 0
            self._jobs = deque(job for job in self._jobs if job.long)
        self._nested = True
        try:
            for job in short:
                job.run()
        finally:
            self._nested = False
        return len(short)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._shutdown:
                    self._ready.wait()
                if not self._jobs:  # shut down and nothing left
                    return
                job = self._jobs.popleft()
            job.run()
            del job  # drop the reference (and the result it may hold) before waiting again

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._shutdown = True
            if cancel_futures:
                while self._jobs:
                    self._jobs.popleft().future.cancel()
            self._ready.notify_all()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
