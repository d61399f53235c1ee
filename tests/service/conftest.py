"""Service fixtures: a real (tiny) export made by the training commands, fake runners, an app driver."""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

import httpx

from contract.tasks import Task

from service.http.app import create_app
from service.settings import Settings


FAKE_TASK = Task(name="fake", labels=("no", "yes"), label_words=("No", "Yes"), fields=("text",), required=("text",),
                 template=lambda fields: fields["text"])


class FakeManifest:
    task = "fake"
    labels = ["no", "yes"]
    label_words = ["No", "Yes"]
    max_length = 16
    pooling = "last"
    base_model = {"name": "none"}
    contract_version = "1.0"
    metrics: dict = {}
    quantization = None


class FakeTokenizer:
    bos_token_id = None

    def __call__(self, text, **kwargs):
        return {"input_ids": [len(w) for w in text.split()] or [0]}

    def decode(self, ids):
        return " ".join("x" * i for i in ids)


class FakeRunner:
    """Stands in for ModelRunner: one word = one token; predicts 'yes' when the text has 'yes'.

    `delay` makes each forward pass slow (to force queueing); `gate` blocks warm-up until set.
    """

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.manifest = FakeManifest()
        self.task = FAKE_TASK
        self.tokenizer = FakeTokenizer()
        self.delay = delay
        self.gate = gate
        self.batches: list[int] = []

    def predict(self, batch):
        self.batches.append(len(batch))
        time.sleep(self.delay)
        return [[0.1, 0.9] if 3 in ids else [0.8, 0.2] for ids in batch]

    def warmup(self):
        if self.gate is not None:
            self.gate.wait(10)


@asynccontextmanager
async def serving(settings: Settings, runners=None, wait_ready: bool = True, hashes_checked: bool = False,
                  engine_socket=None):
    """Run the app's lifespan and yield an httpx client talking to it in-process."""
    app = create_app(settings, runners, hashes_checked=hashes_checked, engine_socket=engine_socket)
    async with app.router.lifespan_context(app):
        # Starlette re-raises an unexpected error after answering (for the server to log); a real server
        # keeps going, and so does this client: it sees the JSON 500 that was sent.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            if wait_ready:
                for _ in range(600):
                    if (await client.get("/ready")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("service never became ready: " + (await client.get("/ready")).text)
            client.app = app  # type: ignore[attr-defined]
            yield client
