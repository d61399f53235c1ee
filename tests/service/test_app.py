"""The HTTP API: both request shapes, vLLM's response shape, every error code, batching, metrics."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings

from .conftest import FakeRunner, serving


def run(coro):
    return asyncio.run(coro)


def fake_settings(**kw) -> Settings:
    return Settings(models={}, **kw)


# --- shapes -----------------------------------------------------------------------------------
def test_classify_answers_in_vllm_shape_for_text_and_lists():
    async def go():
        async with serving(fake_settings(), {"fake": FakeRunner()}) as client:
            one = (await client.post("/classify", json={"model": "fake", "input": "say yes"})).json()
            many = (await client.post("/classify", json={"model": "fake", "input": ["say yes", "nope"]})).json()
            return one, many

    one, many = run(go())
    assert set(one) == {"id", "object", "created", "model", "data", "usage"}
    assert one["object"] == "list" and one["model"] == "fake" and one["id"].startswith("classify-")
    assert one["data"][0] == {"index": 0, "label": "yes", "probs": [0.1, 0.9], "num_classes": 2, "truncated": False}
    assert [d["label"] for d in many["data"]] == ["yes", "no"] and [d["index"] for d in many["data"]] == [0, 1]
    assert many["usage"] == {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}


def test_real_export_serves_structured_fields_with_training_side_logits(tiny_export):
    from contract.export_reader import load_export
    from contract.encoding import encode_input
    from contract.model import pad_batch
    from contract.tasks import get_task

    fields = [{"premise": "The man went home after work.", "hypothesis": "The man went home."},
              {"premise": "It rained all day.", "hypothesis": "The street is dry."}]

    async def go():
        async with serving(Settings(models={"cb": tiny_export}, dtype="float32")) as client:
            structured = (await client.post("/classify", json={"model": "cb", "input": fields})).json()
            text = get_task("cb").format(fields[0])
            plain = (await client.post("/classify", json={"model": "cb", "input": text})).json()
            cards = (await client.get("/v1/models")).json()
            return structured, plain, cards

    structured, plain, cards = run(go())
    assert structured["data"][0]["probs"] == pytest.approx(plain["data"][0]["probs"], abs=1e-6)
    assert structured["data"][0]["label"] in ("entailment", "contradiction", "neutral")
    # the same numbers as the model loaded on the training side's terms (fp32, one at a time)
    loaded = load_export(tiny_export, dtype=torch.float32)
    task = get_task("cb")
    for row, f in zip(structured["data"], fields):
        ids, _ = encode_input(loaded.tokenizer, task.format(f), 512)
        probs = loaded.model(*pad_batch([ids], loaded.tokenizer.pad_token_id)).softmax(-1)[0].tolist()
        assert row["probs"] == pytest.approx(probs, abs=1e-5)
    assert cards["data"][0]["id"] == "cb" and cards["data"][0]["fields"] == ["premise", "hypothesis"]


def test_served_model_has_no_lm_head(tiny_export):
    from service.device.runner import ModelRunner

    runner = ModelRunner.from_export(tiny_export, dtype="float32")
    names = [n for n, _ in runner.model.named_parameters()]
    assert not any("lm_head" in n for n in names)
    assert {n.split(".")[0] for n in names} == {"backbone", "head"}


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("body,status,field", [
    ({"model": "fake"}, 422, "input"),
    ({"model": "fake", "input": 5}, 422, "input"),
    ({"model": "fake", "input": "x", "truncate": "maybe"}, 422, "truncate"),
    ({"model": "fake", "input": []}, 422, "input"),
    ({"model": "fake", "input": ["ok", ""]}, 422, "input.1"),
    ({"model": "fake", "input": [{"txt": "a"}]}, 422, "input.0.txt"),
    ({"model": "nope", "input": "x"}, 404, "model"),
    ({"model": "fake", "input": ["a"] * 5}, 413, "input"),
    ({"model": "fake", "input": "w " * 40, "truncate": False}, 422, "input.0"),
])
def test_errors_name_the_field(body, status, field):
    async def go():
        async with serving(fake_settings(max_inputs_per_request=4), {"fake": FakeRunner()}) as client:
            return await client.post("/classify", json=body)

    response = run(go())
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == field


def test_invalid_json_is_422_and_a_huge_body_is_413():
    async def go():
        async with serving(fake_settings(max_body_bytes=2048), {"fake": FakeRunner()}) as client:
            bad = await client.post("/classify", content=b"{not json", headers={"content-type": "application/json"})
            big = await client.post("/classify", json={"model": "fake", "input": "x" * 5000})

            async def stream():  # no Content-Length: the limit is enforced while reading
                yield b'{"model": "fake", "input": "' + b"y" * 4000 + b'"}'

            streamed = await client.post("/classify", content=stream(), headers={"content-type": "application/json"})
            return bad, big, streamed

    bad, big, streamed = run(go())
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_input"
    assert big.status_code == 413 and streamed.status_code == 413


def test_long_input_is_truncated_and_says_so():
    async def go():
        async with serving(fake_settings(), {"fake": FakeRunner()}) as client:
            return (await client.post("/classify", json={"model": "fake", "input": "w " * 40 + "yes"})).json()

    data = run(go())["data"][0]
    assert data["truncated"] is True and data["label"] == "yes"  # the end (with the question) is kept


def test_not_ready_is_503_until_warm():
    gate = threading.Event()

    async def go():
        async with serving(fake_settings(), {"fake": FakeRunner(gate=gate)}, wait_ready=False) as client:
            before = await client.post("/classify", json={"model": "fake", "input": "x"})
            ready_before = await client.get("/ready")
            health = await client.get("/health")
            gate.set()
            for _ in range(100):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            after = await client.post("/classify", json={"model": "fake", "input": "x"})
            return before, ready_before, health, after

    before, ready_before, health, after = run(go())
    assert before.status_code == 503 and ready_before.status_code == 503 and health.status_code == 200
    assert after.status_code == 200


def test_v1_models_answers_what_ready_answers_loading_ready_and_draining():
    """Issue 23 item 12: one truth for readiness; /v1/models is 503 whenever /ready is (no empty 200 list)."""
    gate = threading.Event()

    async def go():
        async with serving(fake_settings(), {"fake": FakeRunner(gate=gate)}, wait_ready=False) as client:
            loading = await client.get("/v1/models")
            gate.set()
            for _ in range(100):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            ready = await client.get("/v1/models")
            await client.app.state.dhrd.drain()
            return loading, ready, await client.get("/v1/models"), await client.get("/ready")

    loading, ready, draining, ready_draining = run(go())
    assert loading.status_code == 503 and loading.json()["error"]["type"] == "not_ready", loading.text
    assert ready.status_code == 200 and [m["id"] for m in ready.json()["data"]] == ["fake"]
    assert draining.status_code == ready_draining.status_code == 503
    assert draining.json()["error"]["type"] == ready_draining.json()["error"]["type"] == "shutting_down"


def test_bearer_auth_when_configured():
    async def go():
        async with serving(fake_settings(api_key="s3cret"), {"fake": FakeRunner()}) as client:
            body = {"model": "fake", "input": "x"}
            return (await client.post("/classify", json=body),
                    await client.post("/classify", json=body, headers={"Authorization": "Bearer wrong"}),
                    await client.post("/classify", json=body, headers={"Authorization": "Bearer s3cret"}),
                    await client.get("/health"))

    missing, wrong, right, health = run(go())
    assert missing.status_code == 401 and wrong.status_code == 401 and right.status_code == 200
    assert health.status_code == 200


def test_overload_is_429_with_retry_after():
    async def go():
        settings = fake_settings(max_queue=4, max_inputs_per_request=4, max_batch_size=2, max_wait_ms=0)
        async with serving(settings, {"fake": FakeRunner(delay=0.3)}) as client:
            requests = [client.post("/classify", json={"model": "fake", "input": ["a", "b"]}) for _ in range(8)]
            return await asyncio.gather(*requests)

    responses = run(go())
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 429 in codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1 and rejected.json()["error"]["type"] == "overloaded"


def test_deadline_is_504_counted_once():
    """One computing, one still queued when the deadline passes: two 504s, two rejections, nothing else."""
    settings = fake_settings(request_timeout_s=0.2, max_batch_size=1, max_wait_ms=0)

    async def go():
        async with serving(settings, {"fake": FakeRunner(delay=0.5)}) as client:
            responses = await asyncio.gather(*[client.post("/classify", json={"model": "fake", "input": w})
                                               for w in ("x", "y")])
            await asyncio.sleep(0.5)  # the batcher reaches the queued one after the first pass
            return responses, (await client.get("/metrics")).text

    responses, text = run(go())
    assert [r.status_code for r in responses] == [504, 504]
    assert all(r.json()["error"]["type"] == "deadline_exceeded" for r in responses)
    rejected = {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "dhrd_rejected_requests" for s in f.samples if s.name.endswith("_total")}
    assert rejected == {"deadline_exceeded": 2.0}


# --- batching and metrics -----------------------------------------------------------------------
def test_concurrent_requests_share_batches_and_metrics_parse():
    runner = FakeRunner(delay=0.05)

    async def go():
        async with serving(fake_settings(max_batch_size=16, max_wait_ms=20), {"fake": runner}) as client:
            responses = await asyncio.gather(*[client.post("/classify", json={"model": "fake", "input": f"q {i}"})
                                               for i in range(24)])
            await client.post("/classify", json={"model": "nope", "input": "x"})
            return responses, (await client.get("/metrics")).text

    responses, text = run(go())
    assert all(r.status_code == 200 for r in responses)
    assert max(runner.batches) > 1 and sum(runner.batches) >= 24
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sizes = {s.labels["le"]: s.value for s in families["dhrd_batch_size"].samples
             if s.name == "dhrd_batch_size_bucket" and s.labels["model"] == "fake"}
    assert sizes["1.0"] < sizes["+Inf"]  # some batches held more than one sequence
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value for s in families["dhrd_requests"].samples
                if s.name == "dhrd_requests_total"}
    assert requests[("/classify", "200")] == 24 and requests[("/classify", "404")] == 1
    for name in ("dhrd_request_duration_seconds", "dhrd_queue_wait_seconds", "dhrd_inference_duration_seconds",
                 "dhrd_batch_tokens", "dhrd_queue_depth", "dhrd_rejected_requests", "dhrd_ready"):
        assert name in families, name


def test_cot_endpoint_is_404_when_disabled():
    async def go():
        async with serving(fake_settings(), {"fake": FakeRunner()}) as client:
            return await client.post("/classify/cot", json={"model": "fake", "input": "x"})

    response = run(go())
    assert response.status_code == 404 and "--cot" in response.json()["error"]["message"]


def test_cot_endpoint_end_to_end(tiny_export):
    async def go():
        settings = Settings(models={"cb": tiny_export}, dtype="float32", cot=True, cot_max_new_tokens=8)
        async with serving(settings) as client:
            ok = await client.post("/classify/cot", json={
                "model": "cb", "input": [{"premise": "It rained.", "hypothesis": "It was wet."}, "Passage:\nHi"],
                "max_new_tokens": 6, "seed": 1})
            too_long = await client.post("/classify/cot", json={"model": "cb", "input": "x", "max_new_tokens": 9})
            forced = await client.post("/classify/cot", json={"model": "cb", "input": ["a", "b c"],
                                                              "max_new_tokens": 6, "min_new_tokens": 6})
            min_over_max = await client.post("/classify/cot", json={"model": "cb", "input": "x", "max_new_tokens": 4,
                                                                    "min_new_tokens": 5})
            metrics = (await client.get("/metrics")).text
            return ok, too_long, forced, min_over_max, metrics

    ok, too_long, forced, min_over_max, metrics = run(go())
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert len(body["data"]) == 2
    for row in body["data"]:
        assert 1 <= row["generated_tokens"] <= 6 and isinstance(row["rationale"], str)
        if row["parsed"]:
            assert row["label"] in ("entailment", "contradiction", "neutral") and sum(row["probs"]) == 1.0
        else:  # no answer in the text: no label is invented
            assert row["label"] is None and sum(row["probs"]) == 0.0
    assert body["usage"]["completion_tokens"] == sum(r["generated_tokens"] for r in body["data"])
    assert too_long.status_code == 422 and too_long.json()["error"]["field"] == "max_new_tokens"
    # min_new_tokens (vLLM's min_tokens) forces a CoT length: the end of text is suppressed until then
    assert [r["generated_tokens"] for r in forced.json()["data"]] == [6, 6]
    assert min_over_max.status_code == 422 and min_over_max.json()["error"]["field"] == "min_new_tokens"
    assert 'dhrd_cot_generated_tokens_total{model="cb"}' in metrics


def test_tampered_export_is_refused(tiny_export, tmp_path):
    import shutil

    from contract.export_reader import ExportError, load_export

    copy = tmp_path / "cb"
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    with pytest.raises(ExportError, match="config.json: sha256 .* does not match the manifest"):
        load_export(copy)
    manifest["contract_version"] = "2.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="contract_version '2.0' is incompatible"):
        load_export(copy)


def test_a_client_that_disconnects_leaves_no_work_behind():
    """A request whose client goes away while queued is cancelled before its forward pass."""
    runner = FakeRunner(delay=0.3)

    async def go():
        settings = fake_settings(max_batch_size=1, max_wait_ms=0)
        async with serving(settings, {"fake": runner}) as client:
            app = client.app
            blocker = asyncio.ensure_future(client.post("/classify", json={"model": "fake", "input": "first"}))
            await asyncio.sleep(0.05)  # the first request now occupies the worker for 0.3 s
            body = json.dumps({"model": "fake", "input": "gone yes"}).encode()
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            sent = []

            async def receive():
                if messages:
                    return messages.pop(0)
                await asyncio.sleep(0.05)  # then the client hangs up
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/classify", "raw_path": b"/classify", "query_string": b"",
                     "root_path": "", "headers": [(b"content-type", b"application/json"),
                                                  (b"content-length", str(len(body)).encode())],
                     "client": ("127.0.0.1", 1), "server": ("test", 80)}
            await app(scope, receive, send)
            await blocker
            await asyncio.sleep(0.4)  # give the batcher time to (not) run the abandoned request
            metrics = (await client.get("/metrics")).text
            return sent, metrics

    sent, metrics = run(go())
    assert sum(runner.batches) == 1  # only the first request was ever computed
    assert sent[0]["status"] == 499
    assert 'dhrd_rejected_requests_total{reason="client_closed_request"} 1.0' in metrics
    assert 'dhrd_dropped_sequences_total{model="fake",reason="cancelled"} 1.0' in metrics


def _random_json(rng, depth=0):
    kinds = ["str", "int", "float", "bool", "none"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(["", "x", "yes " * rng.randint(0, 30), "\u00e9\u4e2d\U0001F600", "premise", "\x00"])
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, 10**30])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["model", "input", "truncate", "truncate_prompt_tokens", "premise", "hypothesis", "text", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_no_input_causes_a_500(tiny_export):
    """Random bodies, field objects and types against a real (tiny) model: 4xx or 200, never 5xx."""
    import random

    rng = random.Random(0)

    async def go():
        async with serving(Settings(models={"cb": tiny_export}, dtype="float32", max_inputs_per_request=8)) as client:
            codes = []
            for _ in range(300):
                body = _random_json(rng)
                if isinstance(body, dict) and rng.random() < 0.7:
                    body["model"] = "cb"
                    roll = rng.random()
                    if roll < 0.4:
                        body["input"] = [{k: _random_json(rng, 2) for k in ("premise", "hypothesis", "extra")[
                            : rng.randint(0, 3)]}]
                    elif roll < 0.7:  # well-formed text, so some requests succeed alongside the bad ones
                        body = {"model": "cb", "input": rng.choice(["It rained.", "yes " * 600, "\u4e2d\U0001F600"])}
                response = await client.post("/classify", json=body)
                codes.append(response.status_code)
                assert response.status_code < 500, (body, response.text)
            return codes

    codes = run(go())
    assert {200, 422} <= set(codes)


def test_docs_work_offline_with_swagger_ui_served_by_the_service_itself():
    async def go():
        async with serving(fake_settings(), {"fake": FakeRunner()}) as client:
            page = await client.get("/docs")
            bundle = await client.get("/swagger/swagger-ui-bundle.js")
            css = await client.get("/swagger/swagger-ui.css")
            return page, bundle, css

    page, bundle, css = run(go())
    assert page.status_code == 200 and "/swagger/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    assert "cdn." not in page.text and "http://" not in page.text.replace("http://test", "")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000 and css.status_code == 200


def test_models_list_shows_each_models_input_template(tiny_export):
    async def go():
        async with serving(Settings(models={"cb": tiny_export}, dtype="float32")) as client:
            return (await client.get("/v1/models")).json()["data"][0]

    card = run(go())
    assert card["fields"] == ["premise", "hypothesis"]
    assert "<premise>" in card["template"] and "<hypothesis>" in card["template"]
