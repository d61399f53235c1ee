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
long as the last attempt, finish before it, and each attempt gets at most what is left; a server that
sends its answer a byte at a time cannot stretch it (`DeadlineExceeded`). An answer that is not what the
service sends (not JSON, nested too deep, the wrong shape or types) raises `BadResponse`; one larger than
`max_response_bytes` once decoded (16 MiB) raises `ResponseTooLarge` while it is read. `AsyncClient` is the
same over asyncio and sends up to `concurrency` of a long list's requests at once.
"""
from __future__ import annotations

import asyncio
import contextvars
import email.utils
import itertools
import json
import random
import time
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import httpcore  # httpx's own connection layer (installed with it): where the deadline bounds each socket read
import httpx

__all__ = ["AsyncClient", "BadResponse", "Classification", "Client", "DHRDError", "DeadlineExceeded",
           "ResponseTooLarge"]

Input = Union[str, Mapping[str, Any]]
RETRY_STATUSES = (429, 503)
MAX_RESPONSE_BYTES = 16 * 2**20  # an answer for 32 inputs is a few KB: this only stops a broken or hostile server
ACCEPT_ENCODING = "gzip, deflate"  # what _Body can inflate with its output bounded (zlib); not br or zstd
INFLATE_STEP = 2**20  # the most one zlib call inflates
DEADLINE_SLACK_S = 0.01  # a socket timeout cut to the deadline fires about at it: that timeout is the deadline's


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
    def from_response(cls, response: httpx.Response | _Answer) -> "DHRDError":
        """The error an HTTP error answer (its body read) stands for."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        try:
            body = _json(response)
        except BadResponse:  # a proxy's HTML, uvicorn's plain text: the text is the message
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(response.status_code, str(error.get("type") or "error"), str(error.get("message") or ""),
                       error.get("field"), body, retry_after)
        text = response.content[:2000].decode("utf-8", "replace").strip()[:500] or response.reason_phrase
        return cls(response.status_code, "http_error", text, None, body, retry_after)


class DeadlineExceeded(DHRDError):
    """The call's deadline (`deadline_s`, by default the `timeout`) passed before it was over, however the
    server spent it (silent, or sending its answer a byte at a time). `type` 'timeout', `status` None."""

    def __init__(self, deadline_s: float | None):
        super().__init__(None, "timeout", f"the call's deadline ({deadline_s} s) passed")


class BadResponse(DHRDError):
    """An answer the client cannot read: not JSON, JSON nested too deep, not the shape or types the service
    sends, a content-encoding it did not ask for, a corrupt compressed body. `type` 'bad_response'."""

    TYPE = "bad_response"

    def __init__(self, status: int | None, message: str):
        super().__init__(status, self.TYPE, message)


class ResponseTooLarge(BadResponse):
    """An answer larger than `max_response_bytes` once decoded, refused as it was read: no more than that
    was ever held in memory, however well its body compressed. `type` 'response_too_large'."""

    TYPE = "response_too_large"


@dataclass(frozen=True)
class _Answer:
    """A response with its whole body read, under the size cap and the deadline (httpx.Response's names)."""

    status_code: int
    reason_phrase: str
    headers: httpx.Headers
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class _Body:
    """A response body read a chunk at a time, its content-encoding undone here rather than by httpx: zlib
    is told how much output it may make, so a small gzip body that would inflate to gigabytes is refused
    after `limit` bytes instead of being inflated first (httpx inflates each chunk whole)."""

    def __init__(self, response: httpx.Response, limit: int):
        self.status, self.reason, self.headers = response.status_code, response.reason_phrase, response.headers
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        # a transport that read the body itself (httpx.MockTransport) has decoded it too
        self.encoding = "identity" if response.is_stream_consumed else \
            response.headers.get("content-encoding", "identity").strip().lower()
        if self.encoding in ("gzip", "x-gzip", "deflate"):
            self.inflater: Any = zlib.decompressobj(32 + zlib.MAX_WBITS)  # a gzip or a zlib header, either
        elif self.encoding in ("identity", ""):
            self.inflater = None
        else:
            raise BadResponse(self.status, f"the answer's content-encoding {self.encoding!r} was not asked for")

    def feed(self, raw: bytes) -> None:
        if self.inflater is None:
            self._keep(raw)
            return
        # A step at a time (zlib joins one call's output: a step as large as the limit would be held twice),
        # and never more than one byte past the limit: enough to know it was passed.
        while raw:
            try:
                data = self.inflater.decompress(raw, min(self.limit - self.size + 1, INFLATE_STEP))
            except zlib.error as exc:
                raise BadResponse(self.status, f"the answer's {self.encoding} body is corrupt: {exc}") from None
            self._keep(data)
            raw = self.inflater.unconsumed_tail  # what the step's bound left to inflate

    def _keep(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ResponseTooLarge(self.status, f"the answer is larger than max_response_bytes ({self.limit} bytes "
                                                f"decoded); refused while reading it")
        self.parts.append(data)

    def answer(self) -> _Answer:
        return _Answer(self.status, self.reason, self.headers, b"".join(self.parts))


def _json(answer: httpx.Response | _Answer) -> Any:
    """The answer's body as JSON; BadResponse when it is not JSON or nests deeper than the parser goes."""
    try:
        return json.loads(answer.content)
    except RecursionError:  # json recurses once per level: `[[[...]]]` 100000 deep would escape as this
        raise BadResponse(answer.status_code, "the answer's JSON is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, or bytes in no UTF encoding
        raise BadResponse(answer.status_code, f"the answer is not JSON: {exc}") from None


def _data(answer: _Answer) -> list[Any]:
    """The answer's `data` list: /classify and /v1/models both answer `{"data": [...], ...}`."""
    body = _json(answer)
    if not isinstance(body, dict):
        raise BadResponse(answer.status_code, f"the answer is a JSON {type(body).__name__}, not an object")
    data = body.get("data")
    if not isinstance(data, list):
        raise BadResponse(answer.status_code, f"the answer's 'data' is not a list: {data!r:.60}")
    return data


def _classification(status: int, at: int, row: Any, offset: int) -> Classification:
    """Row `at` of a /classify answer's `data`, its types checked: a wrong one is named, not passed on."""
    def bad(what: str) -> BadResponse:
        return BadResponse(status, f"the answer's data[{at}]{what}")

    if not isinstance(row, dict):
        raise bad(f" is not an object: {row!r:.60}")
    index, label, probs, truncated = (row.get(key) for key in ("index", "label", "probs", "truncated"))
    if type(index) is not int:  # a bool is an int to isinstance, and no index
        raise bad(f".index is not an integer: {index!r:.60}")
    if not isinstance(label, str):
        raise bad(f".label is not a string: {label!r:.60}")
    if not isinstance(probs, list) or not all(type(p) in (int, float) for p in probs):
        raise bad(f".probs is not a list of numbers: {probs!r:.60}")
    if truncated is not None and not isinstance(truncated, bool):
        raise bad(f".truncated is not a boolean: {truncated!r:.60}")
    return Classification(offset + index, label, [float(p) for p in probs], bool(truncated))


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
                 deadline_s: float | None, max_response_bytes: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be >= 1, got {max_response_bytes}")
        self.max_response_bytes = max_response_bytes
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
            "headers": {"accept": "application/json", "accept-encoding": ACCEPT_ENCODING,
                        **({"authorization": f"Bearer {api_key}"} if api_key else {})}}

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
            raise DeadlineExceeded(self.deadline_s)
        if isinstance(self.timeout, httpx.Timeout):
            t = self.timeout
            return httpx.Timeout(connect=_cap(t.connect, left), read=_cap(t.read, left), write=_cap(t.write, left),
                                 pool=_cap(t.pool, left))
        return min(self.timeout, left)

    def _check_deadline(self, deadline: float | None) -> None:
        """Raises DeadlineExceeded when `deadline` has passed."""
        if deadline is not None and self._clock() > deadline:
            raise DeadlineExceeded(self.deadline_s)

    def _judge(self, outcome: _Answer | httpx.TransportError, attempt: int, deadline: float | None = None,
               took: float = 0.0) -> tuple[_Answer | None, float]:
        """One attempt's outcome: (the response, 0) on success, (None, seconds to wait) before a retry;
        raises the DHRDError when the failure is final, or when a retry, after its wait, could not take
        as long as this attempt (`took` seconds) before `deadline`."""
        if isinstance(outcome, _Answer):
            if outcome.is_success:
                return outcome, 0.0
            error = DHRDError.from_response(outcome)
        else:
            error = self._transport_error(outcome)
            if error.type == "timeout" and deadline is not None and self._clock() >= deadline - DEADLINE_SLACK_S:
                error = DeadlineExceeded(self.deadline_s)  # the attempt's timeout was what was left of the call
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
    def _results(answer: _Answer, offset: int, sent: int) -> list[Classification]:
        rows = _data(answer)
        results = sorted((_classification(answer.status_code, at, row, offset) for at, row in enumerate(rows)),
                         key=lambda r: r.index)
        if [r.index - offset for r in results] != list(range(sent)):
            raise BadResponse(answer.status_code,
                              f"{sent} inputs sent, answers for indices {[r.index - offset for r in results][:50]}")
        return results

    @staticmethod
    def _cards(answer: _Answer) -> list[dict[str, Any]]:
        cards = _data(answer)
        for at, card in enumerate(cards):
            if not isinstance(card, dict) or not isinstance(card.get("id"), str):
                raise BadResponse(answer.status_code, f"the answer's data[{at}] is not a model card (an object "
                                                      f"with a string 'id'): {card!r:.60}")
        return cards


class Client(_Base):
    """Synchronous client. `timeout`: seconds per HTTP attempt (connect, send, wait, read); the service's own
    deadline (`--request-timeout-s`, 30 s by default) answers 504 first. `deadline_s`: seconds one call
    (`classify`, `models`) may take in all, retries and their waits included (default: `timeout`, its
    largest part for an `httpx.Timeout`; `float('inf')` for none). `max_response_bytes`: the largest answer
    (decoded) read. `transport`: an httpx transport (tests, proxies, a Unix socket); the deadline bounds every
    socket read of an `httpx.HTTPTransport`, and only falls between the body's chunks in any other."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float | httpx.Timeout = 60.0, batch_size: int = 32, max_retries: int = 3,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, max_retry_wait: float = 60.0,
                 deadline_s: float | None = None, max_response_bytes: int = MAX_RESPONSE_BYTES,
                 transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key=api_key, timeout=timeout, batch_size=batch_size, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, max_retry_wait=max_retry_wait,
                         deadline_s=deadline_s, max_response_bytes=max_response_bytes)
        self._http = httpx.Client(transport=transport, **self._client_args)
        _bound_socket_io(self._http)
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
        return self._cards(self._request("GET", "/v1/models", self._deadline()))

    def ready(self) -> bool:
        """True when `GET /ready` answers 200 (every model loaded and warm) within the deadline; no retries."""
        try:
            outcome = self._attempt("GET", "/ready", self._deadline())
        except DHRDError:
            return False
        return isinstance(outcome, _Answer) and outcome.status_code == 200

    def _request(self, method: str, path: str, deadline: float | None, **kwargs: Any) -> _Answer:
        for attempt in itertools.count():
            started = self._clock()
            outcome = self._attempt(method, path, deadline, **kwargs)
            answer, delay = self._judge(outcome, attempt, deadline, self._clock() - started)
            if answer is not None:
                return answer
            self._sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, method: str, path: str, deadline: float | None, **kwargs: Any
                 ) -> _Answer | httpx.TransportError:
        """One exchange, its body read whole; every socket operation in it ends by `deadline` (_DeadlineStream:
        httpx's timeouts are per read, so a server dripping bytes would reset them forever)."""
        request = self._http.build_request(method, path, timeout=self._attempt_timeout(deadline), **kwargs)
        token = _IO_DEADLINE.set(None if deadline is None else time.monotonic() + (deadline - self._clock()))
        try:
            response = self._http.send(request, stream=True)
            try:
                return self._read(response, deadline)
            finally:
                response.close()
        except httpx.TransportError as exc:
            return exc
        finally:
            _IO_DEADLINE.reset(token)

    def _read(self, response: httpx.Response, deadline: float | None) -> _Answer:
        body = _Body(response, self.max_response_bytes)
        for raw in [response.content] if response.is_stream_consumed else response.iter_raw():
            body.feed(raw)
            self._check_deadline(deadline)  # for a transport of the caller's, whose reads the deadline cannot cut
        return body.answer()

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
                 max_response_bytes: int = MAX_RESPONSE_BYTES, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(base_url, api_key=api_key, timeout=timeout, batch_size=batch_size, max_retries=max_retries,
                         backoff_s=backoff_s, max_backoff_s=max_backoff_s, max_retry_wait=max_retry_wait,
                         deadline_s=deadline_s, max_response_bytes=max_response_bytes)
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
        return self._cards(await self._request("GET", "/v1/models", self._deadline()))

    async def ready(self) -> bool:
        """True when `GET /ready` answers 200 (every model loaded and warm) within the deadline; no retries."""
        try:
            outcome = await self._attempt("GET", "/ready", self._deadline())
        except DHRDError:
            return False
        return isinstance(outcome, _Answer) and outcome.status_code == 200

    async def _request(self, method: str, path: str, deadline: float | None, **kwargs: Any) -> _Answer:
        for attempt in itertools.count():
            started = self._clock()
            outcome = await self._attempt(method, path, deadline, **kwargs)
            answer, delay = self._judge(outcome, attempt, deadline, self._clock() - started)
            if answer is not None:
                return answer
            await self._sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(self, method: str, path: str, deadline: float | None, **kwargs: Any
                       ) -> _Answer | httpx.TransportError:
        """One exchange, its body read whole, cancelled when `deadline` passes (httpx's timeouts are per read,
        so a server dripping bytes would reset them forever)."""
        request = self._http.build_request(method, path, timeout=self._attempt_timeout(deadline), **kwargs)
        try:
            async with asyncio.timeout(None if deadline is None else deadline - self._clock()):
                response = await self._http.send(request, stream=True)
                try:
                    return await self._read(response)
                finally:
                    await response.aclose()
        except TimeoutError:  # asyncio.timeout's (httpx's own are httpx.TimeoutException)
            raise DeadlineExceeded(self.deadline_s) from None
        except httpx.TransportError as exc:
            return exc

    async def _read(self, response: httpx.Response) -> _Answer:
        body = _Body(response, self.max_response_bytes)
        if response.is_stream_consumed:  # a transport that read it already (httpx.MockTransport)
            body.feed(response.content)
        else:
            async for raw in response.aiter_raw():
                body.feed(raw)
        return body.answer()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


def _cap(seconds: float | None, left: float) -> float:
    """One part of an httpx.Timeout cut to what is left of the call (None, no limit, becomes `left`)."""
    return left if seconds is None else min(seconds, left)


# The deadline (a time.monotonic() instant) of the sync call running in this thread, for _DeadlineStream.
_IO_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("dhrd_client_io_deadline", default=None)


def _io_timeout(timeout: float | None, error: type[Exception]) -> float | None:
    """One socket operation's timeout cut to what is left of the current call; raises `error` (an httpcore
    timeout, which httpx turns into its own) when nothing is."""
    deadline = _IO_DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the call's deadline, response headers included (httpx
    gives each read the whole timeout again: headers or a body sent a byte at a time would never time out)."""

    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _io_timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _io_timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
                  ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _io_timeout(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with its connections wrapped in _DeadlineStream."""

    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _io_timeout(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None
                            ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _io_timeout(timeout, httpcore.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bound_socket_io(http: httpx.Client) -> None:
    """Puts _DeadlineBackend under each of `http`'s transports that is httpcore's pool (httpx's default, the
    proxies it mounts from the environment, an httpx.HTTPTransport given). httpx offers no public way to
    choose the backend, so this looks its attributes up and leaves alone what it does not find: then the
    deadline still falls between a body's chunks, but not inside one read (the headers')."""
    for transport in (getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()):
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _DeadlineBackend):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
