"""The guarded HTTP protocol (service/http/connections.py) over raw sockets, against the app with a fake model under a
real uvicorn: header bytes measured per request however the bytes arrive, refusals answered in order and in the
one JSON shape, and closing connections that do not lose the answer to a reset."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import uvicorn

from loadtest.servers import free_port, wait_until_ok
from service.http.app import create_app
from service.http.connections import uvicorn_options
from service.settings import Settings

from .conftest import FakeRunner

LIMIT = 8192  # --max-header-bytes here: request line and headers, through the blank line that ends them


@pytest.fixture(scope="module")
def live():
    settings = Settings(models={}, max_header_bytes=LIMIT, header_timeout_s=5.0)
    app = create_app(settings, {"fake": FakeRunner()})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           **uvicorn_options(settings, app)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until_ok(f"http://127.0.0.1:{port}/ready", timeout=20, poll=0.05)
    yield port, app
    server.should_exit = True
    thread.join(10)


def head(size: int, close: bool = False, path: str = "/health") -> bytes:
    """A GET whose request line and headers are exactly `size` bytes."""
    start = b"GET %s HTTP/1.1\r\nhost: x\r\n%sx-pad: " % (path.encode(), b"connection: close\r\n" if close else b"")
    assert size >= len(start) + 4
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset (the answer lost) fails the test."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def answers(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The answers in `data`, in order: (status, head, body); each has a Content-Length."""
    out = []
    while data:
        top, _, rest = data.partition(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in top.lower().split(b"\r\n")[1:])
        length = int(fields[b"content-length"])
        out.append((int(top.split()[1]), top, rest[:length]))
        data = rest[length:]
    return out


def assert_json_error(answer: tuple[int, bytes, bytes], status: int, kind: str) -> dict:
    """The service's one error shape, `{"error": {"type", "message", "field"}}`, closing the connection."""
    code, top, body = answer
    assert code == status, answer
    assert b"content-type: application/json" in top.lower() and b"connection: close" in top.lower(), top
    error = json.loads(body)["error"]
    assert set(error) == {"type", "message", "field"} and error["type"] == kind, error
    return error


def rejected(app, kind: str) -> float:
    return app.state.dhrd.metrics.registry.get_sample_value("dhrd_rejected_requests_total", {"reason": kind}) or 0.0


# --- header bytes: only the request's own, in every read ------------------------------------------------------
def test_pipelined_requests_in_one_write_are_each_measured_alone(live):
    """25 requests of 3 KB and most of a 26th, in one write (reads far over the limit, ending inside a request's
    headers): each request is measured alone, all 26 are answered in order, nothing is refused or counted."""
    port, app = live
    before = rejected(app, "too_large"), rejected(app, "internal")
    last = head(3000, close=True)
    with connect(port) as sock:
        sock.sendall(head(3000) * 25 + last[:2000])
        time.sleep(0.3)
        sock.sendall(last[2000:])
        got = answers(read_all(sock))
    assert [status for status, _, _ in got] == [200] * 26, got[-1]
    assert (rejected(app, "too_large"), rejected(app, "internal")) == before


def test_over_limit_headers_after_pipelined_requests_are_a_431_after_their_answers(live):
    """Requests at the limit, then one a byte over, in one write: the ones at the limit are answered, in order,
    then the JSON 431, then the connection closes."""
    port, app = live
    before = rejected(app, "too_large")
    with connect(port) as sock:
        sock.sendall(head(LIMIT) * 10 + head(LIMIT + 1) + head(100))
        got = answers(read_all(sock))
    assert [status for status, _, _ in got] == [200] * 10 + [431], got
    assert assert_json_error(got[-1], 431, "too_large")["field"] == "headers"
    assert rejected(app, "too_large") == before + 1


@pytest.mark.parametrize("arrival", ["one write", "drip"])
@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1, LIMIT + 2, 9 * LIMIT])
def test_headers_are_measured_the_same_however_they_arrive(live, size, arrival):
    """A header block in one write was not measured at all (70-100 KB passed a 64 KiB limit); one dripped was
    measured a read short. Either way: up to the limit, served; a byte over, the JSON 431."""
    port, app = live
    data = head(size, close=True)
    with connect(port) as sock:
        if arrival == "one write":
            sock.sendall(data)
        else:  # the last bytes one read at a time (TCP_NODELAY, and time for the server to read each)
            sock.sendall(data[:-24])
            for i in range(len(data) - 24, len(data)):
                time.sleep(0.003)
                sock.sendall(data[i:i + 1])
        got = answers(read_all(sock))
    assert len(got) == 1
    if size <= LIMIT:
        assert got[0][0] == 200, got
    else:
        assert_json_error(got[0], 431, "too_large")


BODY = b'{"model": "fake", "input": "hello yes"}'
CHUNKED = (b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
           + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(BODY[i:i + 7]), BODY[i:i + 7]) for i in range(0, len(BODY), 7))
           + b"0\r\nx-trailer: t\r\n\r\n")
SIZED = (b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
         % (len(BODY), BODY))


@pytest.mark.parametrize("first", [CHUNKED, SIZED], ids=["chunked body", "sized body"])
@pytest.mark.parametrize("size", [LIMIT, LIMIT + 1])
def test_a_request_after_a_body_is_measured_from_its_own_first_byte(live, first, size):
    """The next request's headers start where the previous request's body ends (chunk sizes, extensions and
    trailers included), with blank lines between them not counted."""
    port, app = live
    with connect(port) as sock:
        sock.sendall(first + b"\r\n" + head(size, close=True))
        got = answers(read_all(sock))
    assert got[0][0] == 200 and json.loads(got[0][2])["data"], got[0]
    if size <= LIMIT:
        assert [status for status, _, _ in got] == [200, 200], got
    else:
        assert len(got) == 2
        assert_json_error(got[1], 431, "too_large")


@pytest.mark.parametrize("first", [CHUNKED, SIZED], ids=["chunked body", "sized body"])
def test_a_request_after_a_body_split_anywhere_is_measured_from_its_own_first_byte(live, first):
    """The same with the first request cut in two reads at every byte (a chunk's size line, its data's CRLF,
    the trailers, the blank line ending them split across reads), the second read carrying the next request."""
    port, app = live
    for cut in range(1, len(first)):
        for size, statuses in ((LIMIT, [200, 200]), (LIMIT + 1, [200, 431])):
            with connect(port) as sock:
                sock.sendall(first[:cut])
                time.sleep(0.002)
                sock.sendall(first[cut:] + head(size, close=True))
                got = answers(read_all(sock))
            assert [status for status, _, _ in got] == statuses, (cut, size, got)


# --- a refusal that closes the connection is read, not reset ---------------------------------------------------
@pytest.mark.parametrize("version, close", [("HTTP/1.1", b"connection: close\r\n"), ("HTTP/1.0", b"")])
def test_an_over_limit_body_on_a_closing_connection_gets_the_json_413_not_a_reset(live, version, close):
    """A body over --max-body-bytes from a client that asked to close (or speaks HTTP/1.0) got a TCP reset: the
    server closed with the rest of the body unread. Now the client reads the whole JSON 413, then the end."""
    port, app = live
    for _ in range(3):
        with connect(port) as sock:
            sock.sendall(f"POST /classify {version}\r\nhost: x\r\ncontent-type: application/json\r\n"
                         f"content-length: 10000000\r\n".encode() + close + b"\r\n" + b"x" * 300_000)
            try:
                got = answers(read_all(sock))
            except ConnectionResetError as exc:
                pytest.fail(f"the answer was lost to a reset: {exc}")
        assert len(got) == 1
        assert_json_error(got[0], 413, "too_large")


# --- malformed HTTP: the JSON 400, counted ---------------------------------------------------------------------
MALFORMED = {
    "bad chunk size": b"POST /classify HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n",
    "content-length and chunked": b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                                  b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
    "negative content-length": b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-length: -3\r\n\r\nabc",
    "control character in a header": b"GET /health HTTP/1.1\r\nhost: x\r\nx-bad: a\x01b\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "a bad body after a good request": b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
                                       b"POST /classify HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                                       b"zz\r\n",
    "after a good request": b"GET /health HTTP/1.1\r\nhost: x\r\n\r\nGET /health HTTP/1.1\r\nhost: x\r\n"
                            b"content-length: 1\r\ncontent-length: 2\r\n\r\nab",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_gets_the_json_400_and_is_counted(live, data):
    """uvicorn answered these with a plain-text 400, counted nowhere; now the one JSON shape, counted as
    `bad_request`, after any answer already due, and the connection closes."""
    port, app = live
    before = rejected(app, "bad_request")
    with connect(port) as sock:
        sock.sendall(data)
        got = answers(read_all(sock))
    served = data.count(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")  # the good requests before it
    assert [status for status, _, _ in got[:-1]] == [200] * served, got
    error = assert_json_error(got[-1], 400, "bad_request")
    assert error["field"] is None and error["message"].startswith("malformed HTTP request"), error
    assert rejected(app, "bad_request") == before + 1
