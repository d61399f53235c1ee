"""`ServedModel`: one served classifier as the handlers see it: `classify(items)` and `generate(items)`.

Handlers never touch a tokenizer, manifest or task: they pass request items in and get typed
results out. Behind this seam a model is a runner (tokenise, forward) plus a batcher; the CoT
comparison adds a generator and its own batcher.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Sequence

from contract.text import COT_ENDPOINT_PROMPT_VERSION

from .batcher import Batcher
from .cot import CotItem, CotRunner, GenParams
from .errors import DeadlineExceeded, Disabled, InvalidInput, ShuttingDown
from .runner import Encoded, ModelRunner

Item = str | dict[str, Any]


@dataclass(frozen=True)
class InputOptions:
    """How request items become token ids: `truncate` cuts over-long inputs (else 422), `limit` caps tokens."""

    truncate: bool = True
    limit: int | None = None


@dataclass
class Classification:
    label: str
    probs: list[float]
    truncated: bool
    prompt_tokens: int


@dataclass
class Generation:
    label: str | None  # None when no answer could be parsed from the generated text
    probs: list[float]
    truncated: bool
    prompt_tokens: int
    rationale: str
    generated_tokens: int
    parsed: bool


class ServedModel:
    """A served classifier: the pooled head through dynamic batching, and (with --cot) CoT decoding."""

    def __init__(self, name: str, runner: ModelRunner, batcher: Batcher, cot: CotRunner | None = None,
                 cot_batcher: Batcher | None = None):
        self.name = name
        self.runner = runner
        self.batcher = batcher
        self.cot = cot
        self.cot_batcher = cot_batcher

    @property
    def labels(self) -> list[str]:
        return list(self.runner.manifest.labels)

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/models` says about this model."""
        m = self.runner.manifest
        return {"task": m.task, "labels": self.labels, "fields": list(self.runner.task.fields),
                "max_length": m.max_length, "pooling": m.pooling, "base_model": m.base_model.get("name"),
                "contract_version": m.contract_version, "metrics": m.metrics,
                "cot_prompt_version": COT_ENDPOINT_PROMPT_VERSION if self.cot is not None else None}

    def encode(self, items: Sequence[Item], options: InputOptions) -> list[Encoded]:
        """Token ids of every item; raises InvalidInput naming the item's field."""
        return [self.runner.encode(item, i, options.truncate, options.limit) for i, item in enumerate(items)]

    async def classify(self, items: Sequence[Item], options: InputOptions, deadline: float) -> list[Classification]:
        """Class probabilities of every item, batched with concurrent requests; by `deadline` (monotonic) or 504."""
        self.batcher.admit(len(items), deadline)  # refuse before tokenising: a 429 should cost little
        encoded = self.encode(items, options)
        probs = await wait_all(self.batcher.submit([e.ids for e in encoded], deadline), deadline)
        labels = self.labels
        return [Classification(labels[max(range(len(p)), key=p.__getitem__)], p, e.truncated, len(e.ids))
                for p, e in zip(probs, encoded)]

    async def generate(self, items: Sequence[Item], params: GenParams, options: InputOptions,
                       deadline: float) -> list[Generation]:
        """Chain-of-thought answers: the base causal LM decodes around the same (possibly cut) input ids."""
        if self.cot is None or self.cot_batcher is None:
            raise Disabled("the CoT endpoint is disabled; start the service with --cot (DHRD_COT=true)")
        self.cot_batcher.admit(len(items), deadline)
        encoded = self.encode(items, options)
        prompts = [CotItem(self.cot.prompt_ids(e.ids), params) for e in encoded]
        results = await wait_all(self.cot_batcher.submit(prompts, deadline), deadline)
        labels = self.labels
        return [Generation(None if r.label is None else labels[r.label],
                           [float(k == r.label) for k in range(len(labels))], e.truncated, len(p.ids), r.text,
                           r.generated_tokens, r.label is not None)
                for r, e, p in zip(results, encoded, prompts)]


def check_generation_params(params: GenParams, server_limit: int) -> None:
    """A request's decoding knobs against the server's limit; raises InvalidInput naming the field."""
    if params.max_new_tokens > server_limit:
        raise InvalidInput(f"max_new_tokens {params.max_new_tokens} is over the server limit {server_limit}",
                           field="max_new_tokens")
    if params.min_new_tokens > params.max_new_tokens:
        raise InvalidInput(f"min_new_tokens {params.min_new_tokens} is over max_new_tokens {params.max_new_tokens}",
                           field="min_new_tokens")


async def wait_all(futures: list[asyncio.Future], deadline: float) -> list:
    """Results of every future, in order. At the deadline, or when the caller is cancelled (client gone),
    the futures are cancelled so the batcher skips them before they cost a forward pass."""
    try:
        done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.CancelledError:
        _abandon(futures)
        raise
    if pending:
        _abandon(futures)
        raise DeadlineExceeded("no result before the request deadline (request_timeout_s)")
    if any(f.cancelled() for f in futures):  # the batcher was stopped under it
        _abandon(futures)
        raise ShuttingDown("the service stopped before this request was computed; retry on another replica")
    failed = next((f for f in futures if f.exception() is not None), None)
    if failed is not None:
        _abandon(futures)
        raise failed.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def _abandon(futures: list[asyncio.Future]) -> None:
    """Cancel what is pending and mark finished failures as seen: an exception nobody retrieves is
    logged by asyncio as an error, and these outcomes (deadline, client gone) are expected."""
    for f in futures:
        if not f.done():
            f.cancel()
        elif not f.cancelled():
            f.exception()
