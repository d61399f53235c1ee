"""Property-based fuzzing of the OpenAPI document (schemathesis): every operation, valid and invalid
bodies, against a live server. No 5xx, and every answer conforms to the documented schemas.

Left out: the "schema-valid data is accepted" check. The document types `input` as text or an object
of fields; which fields a model takes, and that text must be valid Unicode, depend on the served
model and are refused with a 422 naming the field (tests/service/test_reliability.py)."""
from __future__ import annotations

import threading
from collections import Counter

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode

from loadtest.servers import free_port, wait_until_ok
from service.http.app import create_app
from service.settings import Settings

from .conftest import FakeRunner

KEY = "fuzz-key"  # with a key, the fuzzer also checks that a missing or wrong one is refused
EXAMPLES_PER_OPERATION = 60  # bounded: the whole module runs in well under a minute here


@pytest.fixture(scope="module")
def live_server():
    """The app with a fake model under a real uvicorn on loopback (the fuzzer speaks HTTP)."""
    settings = Settings(models={}, max_inputs_per_request=16, max_queue=64, api_key=KEY)
    app = create_app(settings, {"fake": FakeRunner()})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    assert wait_until_ok(f"{base}/ready", timeout=10, poll=0.05)
    yield base, app
    server.should_exit = True
    thread.join(10)


def operations(app):
    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


def test_no_operation_answers_5xx_or_off_its_documented_schema(live_server):
    base, app = live_server
    ops = operations(app)
    seen: dict[str, Counter] = {}
    assert {op.path for op in ops} >= {"/classify", "/classify/cot", "/v1/models", "/ready", "/health", "/metrics"}
    for op in ops:
        # bodies that fit the schema, and (where there is a body) bodies that do not
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.upper() == "POST" else [])
        for mode in modes:
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
                    case.body["model"] = "fake"  # a random name only ever reaches the 404 (tested elsewhere)
                response = case.call_and_validate(base_url=base, headers={"Authorization": f"Bearer {KEY}"},
                                                  excluded_checks=[positive_data_acceptance])
                seen.setdefault(f"{op.method.upper()} {op.path}", Counter())[response.status_code] += 1

            check()
    # the fuzzer reached the model, not only the validators
    assert seen["POST /classify"][200] > 0 and seen["POST /classify"][422] > 0, seen
