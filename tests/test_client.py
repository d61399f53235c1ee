"""`dhrd.client`: against a live service (the fixture export, real uvicorn or in-process ASGI), a vLLM-style
request unchanged, and stub servers (httpx.MockTransport) for batching, errors, Retry-After and timeouts."""
from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import gzip
import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from dhrd.client import (AsyncClient, BadResponse, Classification, Client, DeadlineExceeded, DHRDError,
                         ResponseTooLarge, parse_retry_after)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXPORT = FIXTURES / "export-v1-cb"
EXPECTED = json.loads((FIXTURES / "export-v1-cb.expected.json").read_text())
CB_LABELS = ("entailment", "contradiction", "neutral")
MAX_INPUTS = 4  # the live service's --max-inputs-per-request: a longer list must be split by the client


# --- a live service -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_url():
    """`dhrd serve`'s app on the fixture export (fp32) under a real uvicorn on a free port, in a thread."""
    import uvicorn

    from loadtest.servers import free_port, wait_until_ok
    from service.http.app import create_app
    from service.settings import Settings

    port = free_port()
    app = create_app(Settings(models={"cb": EXPORT}, dtype="float32", max_inputs_per_request=MAX_INPUTS))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ok(f"{url}/ready", timeout=120, poll=0.2, alive=thread.is_alive), "service not ready"
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


class CountingTransport(httpx.HTTPTransport):
    """Records the number of inputs in each /classify request the client sends."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/classify":
            self.sizes.append(len(json.loads(request.content)["input"]))
        return super().handle_request(request)


def test_a_long_list_is_split_into_requests_the_service_accepts_and_answers_in_order(live_url):
    fields = [row["fields"] for row in EXPECTED]  # six CB inputs with the probabilities the export must give
    inputs = fields + fields[:4]
    transport = CountingTransport()
    with Client(live_url, batch_size=MAX_INPUTS, transport=transport) as client:
        results = client.classify(inputs, model="cb")
    assert transport.sizes == [4, 4, 2]
    assert [r.index for r in results] == list(range(10))
    expected = [row["probs"] for row in EXPECTED] + [row["probs"] for row in EXPECTED[:4]]
    for result, probs in zip(results, expected):
        assert isinstance(result, Classification) and result.label in CB_LABELS and isinstance(result.truncated, bool)
        assert result.probs == pytest.approx(probs, abs=1e-4)
        assert result.label == CB_LABELS[max(range(3), key=probs.__getitem__)]


def test_one_input_text_or_fields_and_the_model_list(live_url):
    with Client(live_url) as client:
        assert client.ready()
        [card] = client.models()
        one = client.classify(EXPECTED[0]["fields"], model="cb")
        text = client.classify("Passage: It rained.\nQuestion: Is the ground wet?", model="cb")
    assert card["id"] == "cb" and card["labels"] == list(CB_LABELS) and card["fields"] == ["premise", "hypothesis"]
    assert len(one) == 1 and one[0].index == 0 and one[0].probs == pytest.approx(EXPECTED[0]["probs"], abs=1e-4)
    assert len(text) == 1 and text[0].label in CB_LABELS


def test_the_services_errors_arrive_as_one_exception_type(live_url):
    with Client(live_url, batch_size=MAX_INPUTS + 1) as client:
        with pytest.raises(DHRDError) as unknown:
            client.classify("x", model="nope")
        with pytest.raises(DHRDError) as too_many:  # the client was told a larger batch than the service takes
            client.classify(["a"] * (MAX_INPUTS + 1), model="cb")
        with pytest.raises(DHRDError) as bad_field:
            client.classify({"premise": "p", "hypothesis": 3}, model="cb")
        with pytest.raises(DHRDError) as too_long:
            client.classify("word " * 5000, model="cb", truncate=False)
    assert (unknown.value.status, unknown.value.type) == (404, "unknown_model") and "nope" in unknown.value.message
    assert (too_many.value.status, too_many.value.type, too_many.value.field) == (413, "too_large", "input")
    assert bad_field.value.status == 422 and bad_field.value.field.endswith("hypothesis")
    assert too_long.value.status == 422 and too_long.value.body["error"]["type"] == too_long.value.type


def test_a_vllm_style_classify_request_works_unchanged(live_url):
    """The request vLLM's documentation shows for its classification API (examples/pooling/classify):
    the first served model from /v1/models, then POST /classify with a list of prompts."""
    headers = {"accept": "application/json", "Content-Type": "application/json"}
    prompts = ["Hello, my name is", "The president of the United States is", "The capital of France is",
               "The future of AI is"]
    model = httpx.get(live_url + "/v1/models", headers=headers).json()["data"][0]["id"]
    response = httpx.post(live_url + "/classify", headers=headers, json={"model": model, "input": prompts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "cb" and body["id"].startswith("classify-")
    assert isinstance(body["created"], int) and body["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert all(d["label"] in CB_LABELS and d["num_classes"] == 3 and len(d["probs"]) == 3 for d in body["data"])
    # and our client reads the same answers
    with Client(live_url) as client:
        mine = client.classify(prompts, model="cb")
    assert [r.label for r in mine] == [d["label"] for d in body["data"]]


def test_async_client_against_the_service_in_process():
    from service.settings import Settings

    from .service.conftest import FakeRunner, serving

    async def go():
        async with serving(Settings(models={}, api_key="sesame", max_inputs_per_request=3),
                           {"fake": FakeRunner(delay=0.01)}) as http:
            transport = httpx.ASGITransport(app=http.app)
            texts = [f"{'say yes' if i % 3 == 0 else 'no'} {i}" for i in range(8)]
            async with AsyncClient("http://test", api_key="sesame", batch_size=3, concurrency=3,
                                   transport=transport) as client:
                results = await client.classify(texts, model="fake")
                models = await client.models()
            async with AsyncClient("http://test", transport=transport) as keyless:
                with pytest.raises(DHRDError) as refused:
                    await keyless.classify("say yes", model="fake")
            return results, models, refused.value

    results, models, refused = asyncio.run(go())
    assert [r.index for r in results] == list(range(8))
    assert [r.label for r in results] == ["yes" if i % 3 == 0 else "no" for i in range(8)]
    assert models[0]["id"] == "fake"
    assert (refused.status, refused.type) == (401, "unauthorized")


# --- stub servers: retries, Retry-After, batching, errors ------------------------------------------
def answer(request: httpx.Request) -> httpx.Response:
    """What the service answers for a well-formed request: label 'yes' for texts containing 'yes'."""
    items = json.loads(request.content)["input"]
    data = [{"index": i, "label": "yes" if "yes" in str(x) else "no",
             "probs": [0.1, 0.9] if "yes" in str(x) else [0.8, 0.2], "num_classes": 2, "truncated": False}
            for i, x in enumerate(items)]
    return httpx.Response(200, json={"id": "classify-1", "object": "list", "created": 0, "model": "m", "data": data,
                                     "usage": {"prompt_tokens": 1, "total_tokens": 1, "completion_tokens": 0}})


def overloaded(retry_after: str | None = "2", status: int = 429, kind: str = "overloaded") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers,
                          json={"error": {"type": kind, "message": "the queue is full", "field": None}})


class Stub:
    """A MockTransport handler answering from a script (then `answer`), recording requests."""

    def __init__(self, *script):
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else answer
        if isinstance(step, Exception):
            raise step
        return step(request) if callable(step) else step


def stub_client(stub: Stub, **kw) -> Client:
    client = Client("http://stub", transport=httpx.MockTransport(stub), **kw)
    client.waits = []  # type: ignore[attr-defined]
    client._sleep = client.waits.append  # type: ignore[attr-defined,method-assign]
    return client


def test_429_with_retry_after_is_waited_for_then_retried():
    stub = Stub(overloaded("2"), overloaded("1", status=503, kind="shutting_down"))
    client = stub_client(stub)
    results = client.classify(["say yes", "nope"], model="m")
    assert [r.label for r in results] == ["yes", "no"] and len(stub.requests) == 3
    assert 2 <= client.waits[0] <= 2.2 and 1 <= client.waits[1] <= 1.1  # what Retry-After asked, plus a little jitter
    assert all(json.loads(r.content) == {"model": "m", "input": ["say yes", "nope"]} for r in stub.requests)


def test_without_retry_after_the_backoff_grows_and_is_capped():
    stub = Stub(*[overloaded(None, status=503)] * 5)
    client = stub_client(stub, max_retries=5, backoff_s=1.0, max_backoff_s=3.0)
    assert client.classify("x", model="m")[0].label == "no"
    assert len(client.waits) == 5 and all(0 <= w <= min(3.0, 2 ** i) for i, w in enumerate(client.waits))


def test_retries_are_bounded_and_the_last_error_is_raised():
    stub = Stub(*[overloaded("1")] * 10)
    client = stub_client(stub, max_retries=2)
    with pytest.raises(DHRDError) as caught:
        client.classify("x", model="m")
    assert len(stub.requests) == 3 and len(client.waits) == 2
    error = caught.value
    assert (error.status, error.type, error.message, error.retry_after) == (429, "overloaded", "the queue is full", 1.0)
    assert error.body == {"error": {"type": "overloaded", "message": "the queue is full", "field": None}}


def test_a_retry_after_longer_than_allowed_is_not_waited_for():
    stub = Stub(overloaded("120"))
    client = stub_client(stub, max_retry_wait=30)
    with pytest.raises(DHRDError) as caught:
        client.classify("x", model="m")
    assert caught.value.retry_after == 120 and client.waits == [] and len(stub.requests) == 1


def test_retry_after_as_an_http_date():
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(when) <= 30
    assert parse_retry_after("3") == 3.0 and parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_client_errors_are_not_retried_and_carry_the_services_error():
    body = {"error": {"type": "invalid_input", "message": "input.1.hypothesis must be a string",
                      "field": "input.1.hypothesis"}}
    stub = Stub(httpx.Response(422, json=body))
    client = stub_client(stub)
    with pytest.raises(DHRDError) as caught:
        client.classify(["a", "b"], model="m")
    error = caught.value
    assert (error.status, error.type, error.field, error.body) == (422, "invalid_input", "input.1.hypothesis", body)
    assert "422 invalid_input" in str(error) and "input.1.hypothesis" in str(error)
    assert len(stub.requests) == 1 and client.waits == []


def test_an_answer_that_is_not_our_json_is_still_a_dhrd_error():
    # uvicorn's own connection-cap answer is plain text; a proxy in front may answer HTML
    stub = Stub(httpx.Response(503, text="Service Unavailable"), httpx.Response(502, text="<html>bad gateway</html>"))
    client = stub_client(stub, max_retries=1)
    with pytest.raises(DHRDError) as caught:
        client.classify("x", model="m")
    assert (caught.value.status, caught.value.type, caught.value.body) == (502, "http_error", None)
    assert "bad gateway" in caught.value.message and len(stub.requests) == 2  # the 503 was retried, the 502 not


def test_connection_failures_are_retried_timeouts_are_not():
    stub = Stub(httpx.ConnectError("refused"), httpx.ConnectError("refused"))
    client = stub_client(stub)
    assert client.classify("yes", model="m")[0].label == "yes" and len(stub.requests) == 3
    stub = Stub(httpx.ReadTimeout("slow"))
    client = stub_client(stub)
    with pytest.raises(DHRDError) as caught:
        client.classify("x", model="m")
    assert (caught.value.status, caught.value.type) == (None, "timeout") and len(stub.requests) == 1
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    stub = Stub(*[httpx.ConnectError("refused")] * 4)
    with pytest.raises(DHRDError) as caught:
        stub_client(stub).classify("x", model="m")
    assert (caught.value.status, caught.value.type) == (None, "connection_error") and len(stub.requests) == 4


def test_the_timeout_applies_to_a_server_that_never_answers():
    with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        with Client(f"http://127.0.0.1:{port}", timeout=0.5) as client:
            start = time.monotonic()
            with pytest.raises(DHRDError) as caught:
                client.classify("x", model="m")
            elapsed = time.monotonic() - start
    assert caught.value.type == "timeout" and 0.4 < elapsed < 5


def test_bearer_key_and_batches_in_order():
    stub = Stub()
    client = stub_client(stub, api_key="k3y", batch_size=2)
    results = client.classify([{"text": "yes"}, "no", "yes", "no", "yes"], model="m", truncate=False)
    assert [r.index for r in results] == [0, 1, 2, 3, 4] and [r.label for r in results] == ["yes", "no"] * 2 + ["yes"]
    assert [json.loads(r.content)["input"] for r in stub.requests] == [[{"text": "yes"}, "no"], ["yes", "no"], ["yes"]]
    assert all(json.loads(r.content)["truncate"] is False for r in stub.requests)
    assert all(r.headers["authorization"] == "Bearer k3y" for r in stub.requests)
    assert "authorization" not in stub_client(Stub()).__dict__["_http"].headers


def test_an_answer_for_the_wrong_number_of_inputs_is_refused():
    stub = Stub(lambda request: answer(httpx.Request("POST", "http://stub", json={"input": ["only one"]})))
    with pytest.raises(DHRDError) as caught:
        stub_client(stub).classify(["a", "b"], model="m")
    assert caught.value.type == "bad_response"


def test_async_client_retries_and_keeps_order_when_answers_arrive_out_of_order():
    requests: list[list[str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        items = json.loads(request.content)["input"]
        requests.append(items)
        if items[0].startswith("t0") and sum(r[0].startswith("t0") for r in requests) == 1:
            return overloaded("1")  # the first chunk is refused once
        await asyncio.sleep(0.05 if items[0].startswith("t0") else 0.0)  # and answered last
        return answer(request)

    async def go():
        waits: list[float] = []

        async def record(seconds: float) -> None:
            waits.append(seconds)

        async with AsyncClient("http://stub", batch_size=2, concurrency=3,
                               transport=httpx.MockTransport(handler)) as client:
            client._sleep = record  # type: ignore[method-assign]
            return await client.classify([f"t{i} {'yes' if i % 2 else ''}" for i in range(6)], model="m"), waits

    results, waits = asyncio.run(go())
    assert [r.index for r in results] == list(range(6)) and [r.label for r in results] == ["no", "yes"] * 3
    assert len(requests) == 4 and 1 <= waits[0] <= 1.1


def test_async_client_raises_the_first_failure_and_cancels_the_rest():
    async def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["input"][0] == "bad":
            return httpx.Response(422, json={"error": {"type": "invalid_input", "message": "no", "field": "input.0"}})
        await asyncio.sleep(0.05)
        return answer(request)

    async def go():
        async with AsyncClient("http://stub", batch_size=1, transport=httpx.MockTransport(handler)) as client:
            return await client.classify(["ok", "bad", "ok"], model="m")

    with pytest.raises(DHRDError) as caught:
        asyncio.run(go())
    assert (caught.value.status, caught.value.field) == (422, "input.0")


def test_the_client_module_needs_only_httpx_and_the_standard_library():
    code = ("import sys; import dhrd.client; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'fastapi', 'pydantic', 'service', 'training', "
            "'contract') if m in sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- issue 23, item 13: a deadline for the whole call; a connection closed before any answer ----------
class FakeClock:
    """Time that passes only when the client waits or the stub server takes its time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_timeout_bounds_the_whole_call_retries_and_waits_included():
    """With timeout=10 against slow 503s the call used to take 4 attempts x 3 s + 3 waits x 2 s."""
    clock = FakeClock()
    sent_timeouts: list[float] = []

    def slow_503(request: httpx.Request) -> httpx.Response:
        sent_timeouts.append(request.extensions["timeout"]["read"])
        clock.sleep(3.0)
        return overloaded("2", status=503, kind="not_ready")

    stub = Stub(*[slow_503] * 10)
    client = stub_client(stub, timeout=10.0)
    client._clock = clock  # type: ignore[attr-defined]
    client._sleep = clock.sleep  # type: ignore[method-assign]
    with pytest.raises(DHRDError) as caught:
        client.classify("x", model="m")
    assert caught.value.status == 503
    assert clock.now <= 10.0 and len(stub.requests) == 2  # 0-3 s, wait 2, 5-8 s; a third could not finish
    assert sent_timeouts[0] == 10.0 and sent_timeouts[1] <= 5.0  # an attempt gets only what is left


def test_deadline_s_is_the_calls_total_and_the_timeout_each_attempts():
    clock = FakeClock()
    attempts: list[tuple[float, float]] = []  # (start, read timeout the attempt was given)

    def slow_429(request: httpx.Request) -> httpx.Response:
        attempts.append((clock.now, request.extensions["timeout"]["read"]))
        clock.sleep(1.0)
        return overloaded("1")

    stub = Stub(*[slow_429] * 20)
    client = stub_client(stub, timeout=2.0, deadline_s=7.0, max_retries=20)
    client._clock = clock  # type: ignore[attr-defined]
    client._sleep = clock.sleep  # type: ignore[method-assign]
    with pytest.raises(DHRDError):
        client.classify("x", model="m")
    assert len(attempts) >= 3 and attempts[0] == (0.0, 2.0)
    assert all(timeout <= 2.0 and start + timeout <= 7.0 + 1e-9 for start, timeout in attempts)


def test_a_real_slow_503_server_is_given_up_on_at_the_timeout():
    import http.server

    class Slow503(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(0.4)
            body = b'{"error": {"type": "not_ready", "message": "loading", "field": null}}'
            self.send_response(503)
            self.send_header("retry-after", "1")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=1.5) as client:
            start = time.monotonic()
            with pytest.raises(DHRDError) as caught:
                client.classify("x", model="m")
            elapsed = time.monotonic() - start
    finally:
        server.shutdown()
    assert caught.value.status == 503 and elapsed < 2.0  # was ~4.6 s: 4 attempts and 3 waits


@pytest.mark.parametrize("closed", [httpx.RemoteProtocolError("Server disconnected without sending a response."),
                                    httpx.WriteError("[Errno 32] Broken pipe")])
def test_a_connection_closed_before_the_request_could_be_processed_is_retried(closed):
    stub = Stub(closed)
    client = stub_client(stub)
    assert client.classify("yes", model="m")[0].label == "yes" and len(stub.requests) == 2


def test_async_client_keeps_the_calls_deadline_too():
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)
        return overloaded("1", status=503, kind="not_ready")

    async def go():
        async with AsyncClient("http://stub", timeout=0.8, transport=httpx.MockTransport(handler)) as client:
            start = time.monotonic()
            with pytest.raises(DHRDError):
                await client.classify(["a", "b"], model="m")
            return time.monotonic() - start

    assert asyncio.run(go()) < 1.0  # was 4 x 0.3 s + 3 x ~1 s


# --- issue: a slow server stretched the deadline; malformed or huge answers escaped as raw exceptions ------
def call_with(kind: str, call: str, url: str = "http://stub", handler: Callable | None = None, **kw: Any) -> Any:
    """`call` ('classify' of one input, or 'models') with the sync or the async client, against `url`'s server
    or, given `handler`, an httpx.MockTransport on it."""
    def transport() -> Any:
        return httpx.MockTransport(handler) if handler is not None else None

    if kind == "sync":
        with Client(url, transport=transport(), **kw) as client:
            return client.classify("x", model="m") if call == "classify" else client.models()

    async def go() -> Any:
        async with AsyncClient(url, transport=transport(), **kw) as client:
            return await (client.classify("x", model="m") if call == "classify" else client.models())

    return asyncio.run(go())


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """An HTTP server on a free 127.0.0.1 port written with sockets, so it can misbehave as no framework lets
    one: it reads each request (head and content-length body), then `answer` writes to the connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            data += (more := conn.recv(65536))
            if not more:
                return False
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)
        while len(body) < length:
            body += (more := conn.recv(65536))
            if not more:
                return False
        return True

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                if read_request(conn):
                    answer(conn, stop)
            except OSError:
                pass  # the client hung up

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def dripping(part: str, every_s: float = 0.5, for_s: float = 4.0) -> Callable[[socket.socket, threading.Event], None]:
    """An answer whose `part` ('headers' or 'body': a 200 announcing 100000 bytes) comes one byte every `every_s`
    seconds, each read well within any timeout, for `for_s` seconds; then it hangs up (so that, were the deadline
    not kept, the test would fail in seconds instead of hanging)."""
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\nx-pad: "
            + b"a" * 200 + b"\r\n\r\n")

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        if part == "body":
            conn.sendall(head)
        ends = time.monotonic() + for_s
        for byte in head if part == "headers" else b" " * 100000:
            if stop.is_set() or time.monotonic() > ends:
                return
            conn.sendall(bytes([byte]))
            time.sleep(every_s)

    return answer


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_server_dripping_its_answer_cannot_stretch_the_deadline(kind, part):
    """httpx's timeouts are per read: a byte every 0.5 s kept a timeout=3 call going for ~25 s."""
    with raw_server(dripping(part)) as url:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            call_with(kind, "classify", url, timeout=1.5)
        elapsed = time.monotonic() - start
    assert caught.value.type == "timeout" and caught.value.status is None
    assert 1.4 < elapsed <= 2.5, elapsed


class SlowStream(httpx.SyncByteStream):
    """A body a transport yields a byte every 0.2 s."""

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(100):
            time.sleep(0.2)
            yield b" "


def test_the_deadline_falls_between_the_chunks_of_a_callers_transport_too():
    """A transport of the caller's (not httpx's pool) cannot have its reads cut: the deadline is checked
    between the chunks it yields."""
    stub = Stub(lambda request: httpx.Response(200, stream=SlowStream()))
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        stub_client(stub, timeout=1.0).classify("x", model="m")
    assert time.monotonic() - start <= 2.0


DEEP = b"[" * 100_000 + b"]" * 100_000
MALFORMED = [  # (the call, a 200's body, what the error's message must name)
    ("models", b"<html>ok</html>", "not JSON"),
    ("models", DEEP, "nested too deeply"),
    ("models", b'{"data": 5}', "'data' is not a list: 5"),
    ("models", b"[1, 2]", "a JSON list, not an object"),
    ("models", b'{"data": [5]}', "data[0] is not a model card"),
    ("classify", b"\xff\xfe\x00garbage", "not JSON"),
    ("classify", DEEP, "nested too deeply"),
    ("classify", b'{"data": {"index": 0}}', "'data' is not a list"),
    ("classify", b'{"data": ["yes"]}', "data[0] is not an object"),
    ("classify", b'{"data": [{"index": "0", "label": "a", "probs": [1.0]}]}', "data[0].index is not an integer"),
    ("classify", b'{"data": [{"index": 0, "label": 1, "probs": [1.0]}]}', "data[0].label is not a string"),
    ("classify", b'{"data": [{"index": 0, "label": "a", "probs": "ab"}]}', "data[0].probs is not a list of numbers"),
    ("classify", b'{"data": [{"index": 0, "label": "a", "probs": [1.0], "truncated": "no"}]}',
     "data[0].truncated is not a boolean"),
]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("call, body, named", MALFORMED,
                         ids=[f"{call}-{i}" for i, (call, _, _) in enumerate(MALFORMED)])
def test_a_malformed_answer_is_a_bad_response_that_names_what_is_wrong(kind, call, body, named):
    """These escaped as JSONDecodeError, RecursionError, or (`{"data": 5}` from models()) were returned."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    with pytest.raises(BadResponse) as caught:
        call_with(kind, call, handler=handler)
    assert (caught.value.status, caught.value.type) == (200, "bad_response") and named in caught.value.message


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_error_answer_nested_too_deep_is_still_the_http_error(kind):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, content=DEEP, headers={"content-type": "application/json"})

    with pytest.raises(DHRDError) as caught:
        call_with(kind, "classify", handler=handler)
    assert (caught.value.status, caught.value.type, caught.value.body) == (422, "http_error", None)


@functools.cache
def gzip_bomb(size: int = 200 * 2**20) -> bytes:
    """`size` zero bytes gzipped (about a thousandth of it), compressed a MiB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    mib = b"\0" * 2**20
    return b"".join(packer.compress(mib) for _ in range(size // 2**20)) + packer.flush()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_gzip_bomb_is_refused_while_it_is_read_not_inflated_first(kind):
    """A 200 KB gzip body inflating to 200 MB grew the client by 387 MB; the default cap is 16 MiB decoded."""
    bomb = gzip_bomb()
    head = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            f"content-length: {len(bomb)}\r\n\r\n").encode()
    with raw_server(lambda conn, stop: conn.sendall(head + bomb)) as url:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge) as caught:
                call_with(kind, "models", url)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert (caught.value.status, caught.value.type) == (200, "response_too_large")
    assert "max_response_bytes" in caught.value.message and isinstance(caught.value, BadResponse)
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MiB traced"  # the cap, a step, bookkeeping


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
def test_max_response_bytes_caps_the_decoded_answer(kind, encoding):
    body = json.dumps({"object": "list", "data": [{"id": f"model-{i:04d}"} for i in range(100)]}).encode()
    encoded = {"identity": body, "gzip": gzip.compress(body), "deflate": zlib.compress(body)}[encoding]
    headers = {"content-type": "application/json", "content-encoding": encoding}

    def handler(request: httpx.Request) -> httpx.Response:  # streamed: the client decodes it
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(encoded))

    assert len(call_with(kind, "models", handler=handler, max_response_bytes=len(body))) == 100
    with pytest.raises(ResponseTooLarge):
        call_with(kind, "models", handler=handler, max_response_bytes=len(body) - 1)
    with pytest.raises(ValueError):
        Client(max_response_bytes=0)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("encoding, body, named", [("br", b"\x0b\x02\x80[]\x03", "content-encoding 'br'"),
                                                   ("gzip", b"not gzip at all", "gzip body is corrupt")],
                         ids=["br", "corrupt-gzip"])
def test_an_encoding_not_asked_for_or_a_corrupt_one_is_a_bad_response(kind, encoding, body, named):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "gzip, deflate"
        return httpx.Response(200, headers={"content-encoding": encoding}, stream=httpx.ByteStream(body))

    with pytest.raises(BadResponse) as caught:
        call_with(kind, "models", handler=handler)
    assert named in caught.value.message
