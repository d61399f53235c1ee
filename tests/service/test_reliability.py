"""Hostile input and faults: every answer is JSON in the error shape, nothing is a 500 unless the
server itself failed, and expected outcomes (deadlines, disconnects) are not logged as errors."""
from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from service.settings import Settings

from .conftest import FakeRunner, serving


def run(coro):
    return asyncio.run(coro)


def post_all(bodies, settings=None, runner=None, headers=None, raw=False):
    async def go():
        async with serving(settings or Settings(models={}), {"fake": runner or FakeRunner()}) as client:
            out = []
            for body in bodies:
                if raw:
                    out.append(await client.post("/classify", content=body, headers={
                        "content-type": "application/json", **(headers or {})}))
                else:
                    out.append(await client.post("/classify", json=body, headers=headers))
            return out
    return run(go())


# --- defect 1 and 11: input the service cannot encode, and small validation holes ---------------------
@pytest.mark.parametrize("raw,field", [
    (b'{"model": "fake", "input": "a\\ud800b"}', "input.0"),
    (b'{"model": "fake", "input": {"text": "a\\udfffb"}}', "input.0.text"),
    (b'{"model": "fake", "input": {"te\\ud800xt": "a"}}', "input.0.te\\ud800xt"),
])
def test_lone_surrogates_are_a_422_naming_the_field(raw, field):
    response = post_all([raw], raw=True)[0]
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["field"] == field


@pytest.mark.parametrize("body,field,words", [
    ({"model": "fake", "input": {"text": 5}}, "input.0.text", "must be a string, got int"),
    ({"model": "fake", "input": {"text": "   "}}, "input.0.text", "is empty"),
    ({"model": "fake", "input": "x", "truncate": "yes"}, "truncate", "boolean"),
])
def test_structured_fields_are_typed_and_not_blank(body, field, words):
    response = post_all([body])[0]
    assert response.status_code == 422 and response.json()["error"]["field"] == field
    assert words in response.json()["error"]["message"]


def test_malformed_json_names_the_body_and_the_position():
    error = post_all([b'{"model": "fake", "input": '], raw=True)[0].json()["error"]
    assert error["field"] == "body" and "not valid JSON (at character" in error["message"]


def test_a_huge_model_name_is_refused_without_being_echoed():
    response = post_all([{"model": "m" * 100_000, "input": "x"}])[0]
    assert response.status_code == 422 and len(response.text) < 2_000


# --- faults inside the server -------------------------------------------------------------------
class Broken(FakeRunner):
    def __init__(self, where: str, message: str = "mat1 and mat2 shapes cannot be multiplied (simulated)"):
        super().__init__()
        self.where = where
        self.message = message
        self.calls = 0

    def predict(self, batch):
        self.calls += 1
        if self.where == "forward" and self.calls == 1:
            raise RuntimeError(self.message)
        return super().predict(batch)


def test_a_forward_pass_that_raises_is_a_json_500_and_the_service_stays_up():
    first, second = post_all([{"model": "fake", "input": "a"}, {"model": "fake", "input": "yes"}],
                             settings=Settings(models={}, max_wait_ms=0), runner=Broken("forward"))
    assert first.status_code == 500 and first.json()["error"]["type"] == "internal"
    assert "mat1" not in first.text  # internals are logged, not sent
    assert second.status_code == 200 and second.json()["data"][0]["label"] == "yes"


def test_a_fatal_device_error_kills_the_engine_instead_of_answering_500_forever():
    """After an illegal memory access the CUDA context is dead: every later pass would fail. The engine
    stops (vLLM's EngineDeadError): 503 to the callers, /ready 503, and the server is told to exit."""
    runner = Broken("forward", "CUDA error: an illegal memory access was encountered (simulated)")

    async def go():
        async with serving(Settings(models={}), {"fake": runner}) as client:
            first = await client.post("/classify", json={"model": "fake", "input": "a"})
            second = await client.post("/classify", json={"model": "fake", "input": "yes"})
            ready = await client.get("/ready")
            return first, second, ready, client.app.state.dhrd.engine_dead

    first, second, ready, dead = run(go())
    assert first.status_code == 503 and first.json()["error"]["type"] == "engine_dead"
    assert "illegal memory" not in first.text
    assert second.status_code == 503 and ready.status_code == 503 and dead
    assert runner.calls == 1  # nothing more was sent to the dead device


def test_the_one_process_server_exits_when_its_engine_died():
    from types import SimpleNamespace

    import uvicorn

    from service.server import DrainingServer

    app = SimpleNamespace(state=SimpleNamespace(dhrd=SimpleNamespace(engine_dead=True)))
    server = DrainingServer(uvicorn.Config(app=None), app)  # type: ignore[arg-type]
    assert run(server.on_tick(0)) is True and server.engine_dead


def test_a_tokenizer_that_raises_is_a_json_500_and_the_service_stays_up():
    runner = FakeRunner()
    real = runner.tokenizer.__class__.__call__

    class Flaky(runner.tokenizer.__class__):
        def __call__(self, text, **kw):
            if "boom" in text:
                raise TypeError("TextEncodeInput must be Union[...] (simulated)")
            return real(self, text, **kw)

    runner.tokenizer = Flaky()
    bad, good = post_all([{"model": "fake", "input": "boom"}, {"model": "fake", "input": "fine"}], runner=runner)
    assert bad.status_code == 500 and bad.json()["error"]["type"] == "internal"
    assert good.status_code == 200


# --- defect 3: an honest queue ------------------------------------------------------------------
def test_after_a_burst_of_expired_requests_a_lone_request_is_served():
    settings = Settings(models={}, max_queue=8, max_inputs_per_request=8, max_batch_size=1, max_wait_ms=0,
                        request_timeout_s=0.2)

    async def go():
        async with serving(settings, {"fake": FakeRunner(delay=0.3)}) as client:
            burst = await asyncio.gather(*[client.post("/classify", json={"model": "fake", "input": ["a"] * 2})
                                           for _ in range(8)])
            lone = await client.post("/classify", json={"model": "fake", "input": "yes"})
            return burst, lone

    burst, lone = run(go())
    assert {r.status_code for r in burst} <= {504, 429}
    # the dead requests of the burst no longer count; the lone one waits only for the pass in progress
    assert lone.status_code in (200, 504) and lone.status_code != 429


# --- defect 6: expected outcomes are not errors ---------------------------------------------------
def test_deadlines_and_disconnects_log_no_error(caplog):
    settings = Settings(models={}, request_timeout_s=0.1, max_batch_size=1, max_wait_ms=0)

    async def go():
        async with serving(settings, {"fake": FakeRunner(delay=0.3)}) as client:
            return await asyncio.gather(*[client.post("/classify", json={"model": "fake", "input": ["a", "b"]})
                                          for _ in range(6)])

    with caplog.at_level(logging.ERROR):
        responses = run(go())
        gc.collect()  # "exception was never retrieved" is logged when the future is collected
    assert all(r.status_code == 504 for r in responses)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


# --- defect 7 and 11: cheap, early refusals; auth before parsing -----------------------------------
def test_unauthenticated_malformed_json_is_401_with_www_authenticate():
    response = post_all([b"{not json"], settings=Settings(models={}, api_key="k"), raw=True)[0]
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")


def test_past_the_in_flight_cap_requests_are_429_before_their_body_is_read():
    settings = Settings(models={}, max_concurrent_requests=2, max_batch_size=1, max_wait_ms=0)

    async def go():
        async with serving(settings, {"fake": FakeRunner(delay=0.2)}) as client:
            return await asyncio.gather(*[client.post("/classify", json={"model": "fake", "input": "a"})
                                          for _ in range(5)])

    codes = sorted(r.status_code for r in run(go()))
    assert codes == [200, 200, 429, 429, 429]


def test_openapi_declares_bearer_auth_and_metrics_as_text():
    async def go():
        async with serving(Settings(models={}, api_key="k"), {"fake": FakeRunner()}) as client:
            return (await client.get("/openapi.json", headers={"Authorization": "Bearer k"})).json()

    doc = run(go())
    assert any(s.get("scheme") == "bearer" for s in doc["components"]["securitySchemes"].values())
    assert "application/json" not in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_metrics_and_docs_can_be_closed_behind_the_key():
    settings = Settings(models={}, api_key="k", protect_metrics=True, protect_docs=True)

    async def go():
        async with serving(settings, {"fake": FakeRunner()}) as client:
            return ((await client.get("/metrics")).status_code, (await client.get("/docs")).status_code,
                    (await client.get("/metrics", headers={"Authorization": "Bearer k"})).status_code,
                    (await client.get("/health")).status_code)

    assert run(go()) == (401, 401, 200, 200)


def test_a_body_that_never_finishes_is_408():
    settings = Settings(models={}, body_timeout_s=0.2)

    async def go():
        async with serving(settings, {"fake": FakeRunner()}) as client:
            async def trickle():
                yield b'{"model": "fake", '
                await asyncio.sleep(1.0)
                yield b'"input": "x"}'

            return await client.post("/classify", content=trickle(), headers={"content-type": "application/json"})

    response = run(go())
    assert response.status_code == 408 and response.json()["error"]["type"] == "timeout"
