"""A small client for the DHRD service's `POST /classify` (vLLM's classification API). Needs only httpx
(`pip install 'dhrd[client]'`); it imports nothing else of this repository.

    from dhrd.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        results = client.classify([{"premise": "It rained all day.", "hypothesis": "The ground got wet."}],
                                  model="cb")
        print(results[0].label, results[0].probs)

`classify` takes one input or a list: pre-formatted text (`str`) or task fields (a mapping such as
`{"premise": ..., "hypothesis": ...}`). A long list is sent as several requests of at most `batch_size`
inputs (the service refuses more than its `--max-inputs-per-request` with 413); results come back in
input order, `index` counting over the whole list. Every failure is a `DHRDError` carrying the HTTP status
and the service's `{"error": {"type", "message", "field"}}`. 429 and 503 (queue full, loading, draining)
are retried up to `max_retries` times, waiting what `Retry-After` asks (or an exponential backoff with
jitter when it says nothing), so are connections that could not be opened and connections closed
before the request could have been processed; a `Retry-After` longer than `max_retry_wait` is not
waited for (the error is raised, with `retry_after` set). `deadline_s` (by default the `timeout`) bounds
a whole call, attempts and the waits between them included: no retry starts that could not, taking as
long as the last attempt, finish before it, and each attempt gets at most what is left. `AsyncClient`
is the same over asyncio and sends up to `concurrency` of a long list's requests at once.
"""
from __future__ import annotations

import asyncio
import email.utils
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import httpx

__all__ = ["AsyncClient", "Classification", "Client", "DHRDError"]

Input = Union[str, Mapping[str, Any]]
RETRY_STATUSES = (429, 503)


@dataclass(frozen=True)
class Classification:
    """One input's answer. `index`: its position in the list given to `classify`; `probs`: one probability
    per label, in the model's label order (`GET /v1/models`); `truncated`: the input was cut to fit."""

    index: int
    label: str
    probs: list[float]
    truncated: bool = False


class DHRDError(Exception):
    """Any failure of a call: an HTTP error answer (`status`, and the service's error `type`, `message` and
    `field`; `body` is the decoded JSON, when it was JSON) or no answer at all (`status` None, `type`
    'connection_error' or 'timeout'). `retry_after`: seconds the service asked to wait, when it did."""

    def __init__(self, status: int | None, type: str, message: str, field: str | None = None,
                 body: Any = None, retry_after: float | None = None):
        self.status = status
        self.type = type
        self.message = message
        self.field = field
        self.body = body
        self.retry_after = retry_after
        where = f" (field {field})" if field else ""
        super().__init__(f"{status if status is not None else 'no answer'} {type}: {message}{where}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> "DHRDError":
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(response.status_code, str(error.get("type") or "error"), str(error.get("message") or ""),
                       error.get("field"), body, retry_after)
        text = response.text.strip()[:500] or response.reason_phrase
        return cls(response.status_code, "http_error", text, None, body, retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Base:
    """What both clients share: the request bodies, the retry decision, the response parsing."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float | httpx.Timeout, batch_size: int,
                 max_retries: int, backoff_s: float, max_backoff_s: float, max_retry_wait: float,
                 deadline_s: float | None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_retry_wait = max_retry_wait
        self.timeout = timeout
        if deadline_s is None:  # one number bounds the call: `timeout=10` gives up after 10 s, not 39
            parts = [timeout] if not isinstance(timeout, httpx.Timeout) else \
                [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t is not None]
            deadline_s = max(parts) if parts else None
        if deadline_s is not None and deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = deadline_s
        self._clock = time.monotonic
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url, "timeout": timeout,
            "headers": {"accept": "application/json", **({"authorization": f"Bearer {api_key}"} if api_key else {})}}

    def _chunks(self, inputs: Input | Sequence[Input]) -> list[list[Input]]:
        items = [inputs] if isinstance(inputs, (str, Mapping)) else list(inputs)
        return [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    @staticmethod
    def _body(model: str, chunk: list[Input], truncate: bool | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "input": [dict(x) if isinstance(x, Mapping) else x for x in chunk]}
        if truncate is not None:
            body["truncate"] = truncate
        return body

    def _deadline(self) -> float | None:
        """When a call starting now must be over (`self._clock` time), or None: no bound."""
        return None if self.deadline_s is None or self.deadline_s == float("inf") else self._clock() + self.deadline_s

    def _attempt_timeout(self, deadline: float | None) -> float | httpx.Timeout:
        """The next attempt's timeout: the per-attempt `timeout`, cut to what is left of the call's deadline;
        raises DHRDError('timeout') when nothing is left."""
        if deadline is None:
            return self.timeout
        left = deadline - self._clock()
        if left <= 0:
            raise DHRDError(None, "timeout", f"the call's deadline ({self.deadline_s} s) passed")
        if isinstance(self.timeout, httpx.Timeout):
            t = self.timeout
            return httpx.Timeout(connect=_cap(t.connect, left), read=_cap(t.read, left), write=_cap(t.write, left),
                                 pool=_cap(t.pool, left))
        return min(self.timeout, left)

    def _judge(self, outcome: httpx.Response | httpx.TransportError, attempt: int, deadline: float | None = None,
               took: float = 0.0) -> tuple[httpx.Response | None, float]:
        """One attempt's outcome: (the response, 0) on success, (None, seconds to wait) before a retry;
        raises the DHRDError when the failure is final, or when a retry, after its wait, could not take
        as long as this attempt (`took` seconds) before `deadline`."""
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return outcome, 0.0
            error = DHRDError.from_response(outcome)
        else:
            error = self._transport_error(outcome)
            error.__cause__ = outcome
        delay = self._delay(attempt, error)
        if delay is None or (deadline is not None and self._clock() + delay + took > deadline):
            raise error
        return None, delay

    def _delay(self, attempt: int, error: DHRDError) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None: do not retry, raise `error`."""
        if attempt >= self.max_retries:
            return None
        if error.status is not None and error.status not in RETRY_STATUSES:
            return None
        if error.status is None and error.type not in ("connection_error", "connection_closed"):
            return None  # a timeout may have left the work queued: sending it again would double it
        if error.retry_after is not None:
            if error.retry_after > self.max_retry_wait:
                return None
            return error.retry_after + random.uniform(0, min(1.0, 0.1 * error.retry_after))  # spread the herd
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt))  # full jitter

    @staticmethod
    def _transport_error(exc: httpx.TransportError) -> DHRDError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return DHRDError(None, "connection_error", f"could not connect: {exc!r}")
        # The request was not fully sent (the service reads the whole body before it starts any work), or
        # the connection was closed with no answer at all: most often a kept-alive connection the server
        # closed as it was reused. The service answers every request it takes on, so nothing was computed
        # (or, if the server died, nothing will be): another attempt cannot double work.
        if isinstance(exc, httpx.WriteError) or (isinstance(exc, httpx.RemoteProtocolError)
                                                 and "without sending a response" in str(exc)):
            return DHRDError(None, "connection_closed", f"connection closed before any answer: {exc!r}")
        if isinstance(exc, httpx.TimeoutException):
            return DHRDError(None, "timeout", f"no answer in time: {exc!r}")
        return DHRDError(None, "transport_error", repr(exc))

    @staticmethod
    def _results(response: httpx.Response, offset: int, sent: int) -> list[Classification]:
        try:
            data = response.json()["data"]
            rows = sorted(data, key=lambda d: d["index"])
            results = [Classification(offset + d["index"], d["label"], list(d["probs"]), bool(d.get("truncated")))
                       for d in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise DHRDError(response.status_code, "bad_response", f"unreadable answer: {exc!r}") from exc
        if [r.index - offset for r in results] != list(range(sent)):
            raise DHRDError(response.status_code, "bad_response",
                            f"{sent} inputs sent, answers for indices {[r.index - offset for r in results]}")
        return results


class Client(_Base):
    """Synchronous client. `timeout`: seconds per HTTP attempt (connect, send, wait, read); the service's own
    deadline (`--request-timeout-s`, 30 s by default) answers 504 first. `deadline_s`: seconds one call
    (`classify`, `models`) may take in all, retries and their waits included (default: `timeout`, its
    largest part for an `httpx.Timeout`; `float('inf')` for none). `transport`: an httpx transport
    (tests, proxies, a Unix socket)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 60.0, batch_size: int = 32, max_retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, max_retry_wait: float = 60.0,
                 deadline_s: float | None = None, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key=api_key, timeout=timeout, batch_size=batch_size, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, max_retry_wait=max_retry_wait,
                         deadline_s=deadline_s)
        self._http = httpx.Client(transport=transport, **self._client_args)
        self._sleep = time.sleep

    def classify(self, inputs: Input | Sequence[Input], model: str, *, truncate: bool | None = None
                 ) -> list[Classification]:
        """Classify one input or a list of them with `model`; one `Classification` per input, in order.
        `truncate`: False asks for 422 on over-long inputs instead of cutting them (the service's default)."""
        results: list[Classification] = []
        offset = 0
        deadline = self._deadline()
        for chunk in self._chunks(inputs):
            response = self._request("POST", "/classify", deadline, json=self._body(model, chunk, truncate))
            results += self._results(response, offset, len(chunk))
            offset += len(chunk)
        return results

    def models(self) -> list[dict[str, Any]]:
        """`GET /v1/models`: each served model's card (id, task, labels, input fields, ...)."""
        return self._request("GET", "/v1/models", self._deadline()).json()["data"]

    def ready(self) -> bool:
        """True when `GET /ready` answers 200 (every model loaded and warm); no retries."""
        try:
            return self._http.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def _request(self, method: str, path: str, deadline: float | None, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count():
            timeout, started = self._attempt_timeout(deadline), self._clock()
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(method, path, timeout=timeout,
                                                                                    **kwargs)
            except httpx.TransportError as exc:
                outcome = exc
            response, delay = self._judge(outcome, attempt, deadline, self._clock() - started)
            if response is not None:
                return response
            self._sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio client: the same calls as `Client`, awaited. A long list's requests go out up to
    `concurrency` at a time (the service batches them together); results keep the input order."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 60.0, batch_size: int = 32, concurrency: int = 4,
                 max_retries: int = 3, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 max_retry_wait: float = 60.0, deadline_s: float | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key=api_key, timeout=timeout, batch_size=batch_size, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, max_retry_wait=max_retry_wait,
                         deadline_s=deadline_s)
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.concurrency = concurrency
        self._http = httpx.AsyncClient(transport=transport, **self._client_args)
        self._sleep = asyncio.sleep

    async def classify(self, inputs: Input | Sequence[Input], model: str, *, truncate: bool | None = None
                       ) -> list[Classification]:
        """Classify one input or a list of them with `model`; one `Classification` per input, in order."""
        chunks = self._chunks(inputs)
        offsets = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
        gate = asyncio.Semaphore(self.concurrency)
        deadline = self._deadline()  # one for the whole call: waiting for the gate counts too

        async def one(chunk: list[Input], offset: int) -> list[Classification]:
            async with gate:
                response = await self._request("POST", "/classify", deadline,
                                               json=self._body(model, chunk, truncate))
            return self._results(response, offset, len(chunk))

        tasks = [asyncio.ensure_future(one(c, o)) for c, o in zip(chunks, offsets)]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:  # one request failed (or we were cancelled): the others are not worth finishing
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [r for part in parts for r in part]

    async def models(self) -> list[dict[str, Any]]:
        """`GET /v1/models`: each served model's card (id, task, labels, input fields, ...)."""
        return (await self._request("GET", "/v1/models", self._deadline())).json()["data"]

    async def ready(self) -> bool:
        """True when `GET /ready` answers 200 (every model loaded and warm); no retries."""
        try:
            return (await self._http.get("/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def _request(self, method: str, path: str, deadline: float | None, **kwargs: Any) -> httpx.Response:
        for attempt in itertools.count():
            timeout, started = self._attempt_timeout(deadline), self._clock()
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(
                    method, path, timeout=timeout, **kwargs)
            except httpx.TransportError as exc:
                outcome = exc
            response, delay = self._judge(outcome, attempt, deadline, self._clock() - started)
            if response is not None:
                return response
            await self._sleep(delay)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def _cap(seconds: float | None, left: float) -> float:
    """One part of an httpx.Timeout cut to what is left of the call (None, no limit, becomes `left`)."""
    return left if seconds is None else min(seconds, left)
