"""Locust users for the DHRD service: `/classify` (pooled head) and `/classify/cot` (CoT decoding).

Inputs are real examples from the validation split of the served task (a mix of lengths), sent as
structured fields the service formats with the contract's task template.

Environment:
    DHRD_LOAD_MODEL     served model name (default cb); DHRD_LOAD_TASK the task behind it (default: same)
    DHRD_DATA_DIR       data root (default ../shared/data beside the repository)
    DHRD_LOAD_BATCH     inputs per /classify request (default 1)
    DHRD_COT_MAX_NEW_TOKENS   max_new_tokens for CoT users (default 500, the paper's setting)
    DHRD_COT_MIN_NEW_TOKENS   min_new_tokens for CoT users (default 0: stop at the model's end of text)
    DHRD_API_KEY        bearer token, when the service requires one
    DHRD_LOAD_INPUTS    a JSON file of inputs to send instead (e.g. texts cut to a fixed token length)
    DHRD_LOAD_PACE      requests/s per ClassifyUser (default: none, closed loop: send as soon as answered)
Run: locust -f loadtest/bench/locustfile.py --host http://127.0.0.1:8000 ClassifyUser
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

from locust import FastHttpUser, between, constant, constant_throughput, task

REPO = Path(__file__).resolve().parents[2]  # the checkout (the Locust image: /app)
sys.path.insert(0, str(REPO))
# Pure Python (no torch needed in a Locust image). Splits are read by the contract's reader, the one
# training uses: a copy here once opened `flan/<task>_train.tsv#val` as a file name.
from contract.data import load_examples  # noqa: E402
from contract.tasks import get_task  # noqa: E402

MODEL = os.environ.get("DHRD_LOAD_MODEL", "cb")
TASK = get_task(os.environ.get("DHRD_LOAD_TASK", MODEL))
BATCH = int(os.environ.get("DHRD_LOAD_BATCH", "1"))
COT_TOKENS = int(os.environ.get("DHRD_COT_MAX_NEW_TOKENS", "500"))
COT_MIN_TOKENS = int(os.environ.get("DHRD_COT_MIN_NEW_TOKENS", "0"))
PACE = float(os.environ.get("DHRD_LOAD_PACE") or 0)
HEADERS = {"Authorization": f"Bearer {os.environ['DHRD_API_KEY']}"} if os.environ.get("DHRD_API_KEY") else {}


def load_inputs(limit: int = 2000) -> list[dict]:
    """The task's validation inputs as structured fields (the service formats them), at most `limit`."""
    data_dir = Path(os.environ["DHRD_DATA_DIR"]) if os.environ.get("DHRD_DATA_DIR") else None
    return [{k: v for k, v in e.fields.items() if v is not None}
            for e in load_examples(TASK, "val", data_dir, limit=limit)]


INPUTS = (json.loads(Path(os.environ["DHRD_LOAD_INPUTS"]).read_text()) if os.environ.get("DHRD_LOAD_INPUTS")
          else load_inputs())


# FastHttpUser (geventhttpclient), not HttpUser (requests): several times less client CPU per request,
# and on a 2-core machine the load generator shares the cores with the server it measures.
class ClassifyUser(FastHttpUser):
    """Client of POST /classify: closed loop (a new request as soon as the last one returns), or
    paced at DHRD_LOAD_PACE requests/s per user to offer a fixed load."""

    wait_time = constant_throughput(PACE) if PACE else constant(0)

    @task
    def classify(self) -> None:
        body = {"model": MODEL, "input": random.sample(INPUTS, BATCH) if BATCH > 1 else random.choice(INPUTS)}
        with self.client.post("/classify", json=body, headers=HEADERS, name="/classify",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class InfinityUser(FastHttpUser):
    """The peer: infinity-emb's POST /classify on the HF-layout export of the same classifier.
    Sends pre-formatted text (infinity has no task templates), served as DHRD_PEER_MODEL."""

    wait_time = constant(0)

    @task
    def classify(self) -> None:
        item = random.choice(INPUTS)
        text = item if isinstance(item, str) else TASK.format(item)
        body = {"model": os.environ.get("DHRD_PEER_MODEL", "peer"), "input": [text]}
        with self.client.post("/classify", json=body, name="/classify (infinity)", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class CotUser(FastHttpUser):
    """Client of POST /classify/cot with the paper's decoding settings (T=0.1, top_p=0.7)."""

    wait_time = between(0, 0.1)
    network_timeout = 600.0  # one 500-token decode on a CPU takes tens of seconds

    @task
    def classify_cot(self) -> None:
        body = {"model": MODEL, "input": random.choice(INPUTS), "temperature": 0.1, "top_p": 0.7,
                "max_new_tokens": COT_TOKENS, "min_new_tokens": COT_MIN_TOKENS}
        with self.client.post("/classify/cot", json=body, headers=HEADERS, name="/classify/cot",
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
