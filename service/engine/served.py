"""`ServedModel`: one served classifier as the handlers see it: `classify(items)` and `generate(items)`.

Handlers never touch a tokenizer, manifest or task: they pass request items in and get typed
results out. Behind this seam a model is an encoder (items → token ids, in this process) and a
queue to the forward pass: a `Batcher` in this process (`--workers 0`) or a `RemoteQueue` to the
engine process. The CoT comparison adds its prompt (ids around the input) and its own queue.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, Sized

from contract.encoding import BOUNDARY_TOKENS, CHARS_PER_TOKEN_GUESS
from contract.text import COT_ENDPOINT_PROMPT_VERSION

from ..errors import Disabled, InvalidInput
from ..generation import CotItem, GenParams
from .cot_prompt import CotPrompt
from .encoder import Encoded, InputEncoder

Item = str | dict[str, Any]

# A request with more text than this is tokenised in a worker thread, an input at a time, so the event
# loop (health checks, reading other bodies, answering) gets the GIL back between inputs; smaller ones
# stay on the loop, where a thread hop would cost more than the tokenising (our choice of threshold).
INLINE_CHARS = 32_768
_TOKENISER = ThreadPoolExecutor(1, thread_name_prefix="dhrd-tok")


class WorkQueue(Protocol):
    """What a served model needs from the forward pass: `batcher.Batcher` in-process, or
    `client.RemoteQueue` to the engine process."""

    def admit(self, n: int, deadline: float) -> None: ...

    async def run(self, sequences: Sequence[Sized], deadline: float) -> list[Any]: ...

    async def drain(self, grace_s: float) -> int: ...

    async def stop(self) -> None: ...


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

    def __init__(self, name: str, encoder: InputEncoder, batcher: WorkQueue, cot: CotPrompt | None = None,
                 cot_batcher: WorkQueue | None = None):
        self.name = name
        self.encoder = encoder
        self.batcher = batcher
        self.cot = cot
        self.cot_batcher = cot_batcher
        self._seconds_per_char = 0.0  # tokenising cost, a running estimate the admission check adds to the wait

    @property
    def labels(self) -> list[str]:
        return list(self.encoder.manifest.labels)

    def describe(self) -> dict[str, Any]:
        """What `GET /v1/models` says about this model."""
        m = self.encoder.manifest
        return {"task": m.task, "labels": self.labels, "fields": list(self.encoder.task.fields),
                "template": template_preview(self.encoder.task),
                "max_length": m.max_length, "pooling": m.pooling, "base_model": m.base_model.get("name"),
                "contract_version": m.contract_version, "metrics": m.metrics, "quantization": m.quantization,
                "cot_prompt_version": COT_ENDPOINT_PROMPT_VERSION if self.cot is not None else None}

    def encode(self, items: Sequence[Item], options: InputOptions) -> list[Encoded]:
        """Token ids of every item; raises InvalidInput naming the item's field."""
        return [self.encoder.encode(item, i, options.truncate, options.limit) for i, item in enumerate(items)]

    def _work(self, items: Sequence[Item]) -> int:
        """Characters the tokenizer will see: each item's text, up to what `encode_bounded` first reads."""
        cap = CHARS_PER_TOKEN_GUESS * (self.encoder.manifest.max_length + BOUNDARY_TOKENS)
        return sum(min(cap, _chars(item)) for item in items)

    def _admit(self, queue: WorkQueue, items: Sequence[Item], deadline: float) -> int:
        """The queue's admission check (before tokenising: a 429 should cost little), with this request's
        own tokenising time counted against its deadline. Returns the request's work in characters."""
        work = self._work(items)
        queue.admit(len(items), deadline - work * self._seconds_per_char)
        return work

    async def _encode(self, items: Sequence[Item], options: InputOptions, work: int) -> list[Encoded]:
        """`encode`, off the event loop when the request holds much text; updates the cost estimate."""
        started = time.perf_counter()
        if work <= INLINE_CHARS:
            encoded = self.encode(items, options)
        else:
            encoded = await asyncio.get_running_loop().run_in_executor(_TOKENISER, self.encode, items, options)
        if work:
            rate = (time.perf_counter() - started) / work
            self._seconds_per_char = rate if not self._seconds_per_char else 0.8 * self._seconds_per_char + 0.2 * rate
        return encoded

    async def classify(self, items: Sequence[Item], options: InputOptions, deadline: float) -> list[Classification]:
        """Class probabilities of every item, batched with concurrent requests; by `deadline` (monotonic) or 504."""
        work = self._admit(self.batcher, items, deadline)
        encoded = await self._encode(items, options, work)
        probs = await self.batcher.run([e.ids for e in encoded], deadline)
        labels = self.labels
        return [Classification(labels[max(range(len(p)), key=p.__getitem__)], p, e.truncated, len(e.ids))
                for p, e in zip(probs, encoded)]

    async def generate(self, items: Sequence[Item], params: GenParams, options: InputOptions,
                       deadline: float) -> list[Generation]:
        """Chain-of-thought answers: the base causal LM decodes around the same (possibly cut) input ids."""
        if self.cot is None or self.cot_batcher is None:
            raise Disabled("the CoT endpoint is disabled; start the service with --cot (DHRD_COT=true)")
        work = self._admit(self.cot_batcher, items, deadline)
        encoded = await self._encode(items, options, work)
        prompts = [CotItem(self.cot.prompt_ids(e.ids), params) for e in encoded]
        results = await self.cot_batcher.run(prompts, deadline)
        labels = self.labels
        return [Generation(None if r.label is None else labels[r.label],
                           [float(k == r.label) for k in range(len(labels))], e.truncated, len(p.ids), r.text,
                           r.generated_tokens, r.label is not None)
                for r, e, p in zip(results, encoded, prompts)]


def _chars(item: Item) -> int:
    """Characters of text in a request item (a string, or a fields object's strings and string lists)."""
    if isinstance(item, str):
        return len(item)
    total = 0
    for value in item.values():
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            total += sum(len(v) for v in value if isinstance(v, str))
    return total


def template_preview(task) -> str | None:
    """The task's template rendered with `<field>` placeholders: what a client's fields object turns into."""
    try:
        return task.format({f: f"<{f}>" for f in task.fields})
    except Exception:  # a template that needs real values (numbers, lists) has no preview
        return None


def check_generation_params(params: GenParams, server_limit: int) -> None:
    """A request's decoding knobs against the server's limit; raises InvalidInput naming the field."""
    if params.max_new_tokens > server_limit:
        raise InvalidInput(f"max_new_tokens {params.max_new_tokens} is over the server limit {server_limit}",
                           field="max_new_tokens")
    if params.min_new_tokens > params.max_new_tokens:
        raise InvalidInput(f"min_new_tokens {params.min_new_tokens} is over max_new_tokens {params.max_new_tokens}",
                           field="min_new_tokens")
