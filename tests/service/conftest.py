"""Service fixtures: a real (tiny) export made by the training commands, fake runners, an app driver."""
from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager

import httpx

from service.app import create_app
from service.settings import Settings


class FakeTask:
    name = "fake"
    fields = ("text",)

    def format(self, fields):
        return fields["text"]


class FakeManifest:
    task = "fake"
    labels = ["no", "yes"]
    label_words = ["No", "Yes"]
    max_length = 16
    pooling = "last"
    base_model = {"name": "none"}
    contract_version = "1.0"
    metrics: dict = {}


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
        from service.runner import ModelRunner

        self.manifest = FakeManifest()
        self.task = FakeTask()
        self.tokenizer = FakeTokenizer()
        self.labels = list(self.manifest.labels)
        self.delay = delay
        self.gate = gate
        self.batches: list[int] = []
        self.encode = lambda item, index, truncate, limit=None: ModelRunner.encode(self, item, index, truncate, limit)
        self.format = lambda item, index: ModelRunner.format(self, item, index)

    def predict(self, batch):
        self.batches.append(len(batch))
        time.sleep(self.delay)
        return [[0.1, 0.9] if 3 in ids else [0.8, 0.2] for ids in batch]

    def warmup(self):
        if self.gate is not None:
            self.gate.wait(10)


@asynccontextmanager
async def serving(settings: Settings, runners=None, wait_ready: bool = True):
    """Run the app's lifespan and yield an httpx client talking to it in-process."""
    app = create_app(settings, runners)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
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
