"""The /classify fast path (service/http/fast_path.py): valid bodies skip FastAPI's request machinery, and
every answer, good or bad, is what the FastAPI route gives (the service with `--no-fast-path`)."""
from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

import service.http.fast_path as fast_path
from service.http.schemas import ClassifyResponse
from service.settings import Settings

from .conftest import FakeRunner, serving

JSON = {"content-type": "application/json"}
# (path, body bytes, headers): valid requests, each kind of refusal, and what the fast path hands on.
REQUESTS = [
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), JSON),
    ("/v1/classify", json.dumps({"model": "fake", "input": ["say yes", "nope", {"text": "yes again"}]}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": "é yes ☃", "truncate_prompt_tokens": 1}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": "w " * 40, "truncate": False}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": ["ok", ""]}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": [{"txt": "a"}]}), JSON),
    ("/classify", json.dumps({"model": "nope", "input": "x"}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": ["a"] * 5}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": []}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": "x", "truncate": "yes"}), JSON),
    ("/classify", json.dumps({"model": "fake", "input": "x", "colour": "red"}), JSON),
    ("/classify", '{"model": "fake", "input": "\\ud800"}', JSON),
    ("/classify", "{not json", JSON),
    ("/classify", "", JSON),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": "text/plain"}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": "application/json; charset=utf-8"}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}).encode("utf-16"), JSON),
    # content types (issue 32, item 5: without one, the fast path answered 200 where the route gave 422)
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {}),
    ("/classify", json.dumps({"model": "nope", "input": "x"}), {}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": ""}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": "Application/JSON"}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": "application/vnd.api+json"}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": "application/jsonx"}),
    ("/classify", json.dumps({"model": "fake", "input": "say yes"}), {"content-type": "text/json"}),
]


def answers(fast: bool) -> list[tuple[int, str, dict]]:
    async def go():
        settings = Settings(models={}, max_inputs_per_request=4, fast_path=fast)
        async with serving(settings, {"fake": FakeRunner()}) as client:
            out = []
            for path, body, headers in REQUESTS:
                r = await client.post(path, content=body, headers=headers)
                out.append((r.status_code, r.headers["content-type"], r.json()))
            return out

    return asyncio.run(go())


def test_every_answer_is_the_one_the_fastapi_route_gives():
    fast, slow = answers(True), answers(False)
    for (path, body, _), a, b in zip(REQUESTS, fast, slow):
        for answer in (a, b):  # a fresh id and timestamp per answer; the rest must be equal
            answer[2].pop("id", None), answer[2].pop("created", None)
        assert a == b, (path, body)
    assert [status for status, _, _ in fast].count(200) == 7  # the table holds both kinds
    no_type = [a for (_, _, headers), a in zip(REQUESTS, fast) if headers == {}]
    assert [status for status, _, _ in no_type] == [422, 422]  # FastAPI's strict content type, both ways


def test_a_valid_request_takes_the_fast_path_and_its_answer_fits_the_documented_schema(monkeypatch):
    taken = []
    real = fast_path.classify_answer

    async def spy(*args):
        taken.append(args[1].model)
        return await real(*args)

    monkeypatch.setattr(fast_path, "classify_answer", spy)

    async def go():
        async with serving(Settings(models={}), {"fake": FakeRunner()}) as client:
            good = await client.post("/classify", json={"model": "fake", "input": "say yes"})
            bad = await client.post("/classify", json={"model": "fake", "input": 5})
            metrics = (await client.get("/metrics")).text
            return good, bad, metrics

    good, bad, metrics = asyncio.run(go())
    assert taken == ["fake"]  # the invalid body went on to FastAPI
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "input"
    answer = ClassifyResponse.model_validate_json(good.content)
    assert answer.data[0].label == "yes" and good.headers["content-length"] == str(len(good.content))
    counted = {(s.labels.get("endpoint"), s.labels.get("model"), s.labels.get("status")): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "dhrd_requests_total"}
    assert counted[("/classify", "fake", "200")] == 1 and counted[("/classify", "-", "422")] == 1


@pytest.mark.parametrize("fast", [True, False])
def test_a_client_that_leaves_mid_body_gets_no_answer_and_breaks_nothing(fast):
    """The disconnect is handed to FastAPI with the bytes already read, as the route always handled it."""
    from service.http.app import create_app

    async def go():
        app = create_app(Settings(models={}, fast_path=fast), {"fake": FakeRunner()})
        async with app.router.lifespan_context(app):
            while not app.state.dhrd.ready:
                await asyncio.sleep(0.01)
            messages = [{"type": "http.request", "body": b'{"model": "fake", ', "more_body": True},
                        {"type": "http.disconnect"}]

            async def receive():
                return messages.pop(0) if messages else await asyncio.sleep(3600)

            sent = []

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/classify", "raw_path": b"/classify", "query_string": b"",
                     "root_path": "", "headers": [(b"content-type", b"application/json")],
                     "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
            try:
                await asyncio.wait_for(app(scope, receive, send), 10)
            except Exception as exc:  # Starlette raises ClientDisconnect out of the app: nobody is listening
                sent.append({"type": "raised", "name": type(exc).__name__})
            ok = await _classify_once(app)
            return sent, ok

    sent, ok = asyncio.run(go())
    assert not any(m["type"] == "http.response.start" and m["status"] == 200 for m in sent)
    assert ok == 200  # the service answers the next request


async def _classify_once(app) -> int:
    import httpx

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return (await client.post("/classify", json={"model": "fake", "input": "say yes"})).status_code
