"""The OpenAI-compatible teacher against a scripted stub server on loopback: retries, backoff, Retry-After."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from training.rationales.teachers import OpenAITeacher, TeacherError, retry_after


class Script:
    """Replies in order; each reply is (status, headers, body, delay_seconds)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def next(self, body: dict):
        with self.lock:
            self.requests.append(body)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def ok(text: str):
    return 200, {}, {"choices": [{"message": {"role": "assistant", "content": text}}]}, 0.0


@pytest.fixture()
def stub():
    servers = []

    def start(replies):
        script = Script(replies)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, headers, payload, delay = script.next(body)
                time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", script

    yield start
    for s in servers:
        s.shutdown()


def test_retries_429_and_5xx_honouring_retry_after(stub):
    url, script = stub([(429, {"Retry-After": "2"}, {"error": "slow down"}, 0), (503, {}, {}, 0), ok("Because.")])
    sleeps: list[float] = []
    teacher = OpenAITeacher(url, "m", sleep=sleeps.append, backoff_base=0.5)
    assert teacher.complete(["why?"], attempt=0) == ["Because."]
    assert sleeps[0] == 2.0  # Retry-After wins over backoff
    assert 0 <= sleeps[1] <= 1.0  # full jitter on base * 2**retry
    assert teacher.stats == {"retries": 2, "failures": 0}
    assert script.requests[0]["model"] == "m" and script.requests[0]["messages"][-1]["content"] == "why?"


def test_gives_up_after_max_retries_without_ending_the_run(stub):
    url, _ = stub([(500, {}, {}, 0)])
    teacher = OpenAITeacher(url, "m", sleep=lambda s: None, max_retries=2)
    assert teacher.complete(["a", "b"], attempt=0) == [None, None]
    assert teacher.stats == {"retries": 4, "failures": 2}


def test_timeouts_are_retried(stub):
    url, _ = stub([(200, {}, {}, 1.0), ok("Late but fine.")])
    teacher = OpenAITeacher(url, "m", sleep=lambda s: None, timeout=0.2, max_retries=3)
    assert teacher.complete(["q"], attempt=0) == ["Late but fine."]
    assert teacher.stats["retries"] == 1


def test_client_errors_are_not_retried(stub):
    url, _ = stub([(401, {}, {"error": "bad key"}, 0)])
    with pytest.raises(TeacherError, match="HTTP 401"):
        OpenAITeacher(url, "m", sleep=lambda s: None).complete(["q"], attempt=0)


def test_concurrency_is_bounded(stub):
    url, script = stub([(200, {}, {"choices": [{"message": {"content": "ok ok ok ok ok"}}]}, 0.2)])
    teacher = OpenAITeacher(url, "m", concurrency=3)
    t0 = time.perf_counter()
    teacher.complete(["q"] * 6, attempt=0)
    assert time.perf_counter() - t0 >= 0.39  # 6 requests, 3 at a time, 0.2 s each


def test_retry_after_parses_seconds_and_dates():
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after(future) <= 31
