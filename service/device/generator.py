"""Chain-of-thought comparison: decode a rationale and answer with the export's *base* causal LM.

This is what DHRD avoids at inference: the same backbone generating up to hundreds of tokens
per input (paper §E.6 defaults: sampling, T=0.1, top_p=0.7, up to 500 new tokens). The base
model is loaded only when the endpoint is enabled; classification never touches an LM head.
"""
from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria

from contract.encoding import load_tokenizer
from contract.manifest import Manifest
from contract.text import parse_answer

from ..errors import DeadlineExceeded
from ..generation import CotItem, CotResult, GenParams


def base_model_path(name: str, manifest: Manifest) -> Path:
    path = Path(manifest.base_model.get("path") or "")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model {name!r}: base model {path} named in the manifest is not available; "
                                "the CoT endpoint needs it (run `dhrd base-model` or disable --cot)")
    return path


# How the CoT baseline decodes. "dynamic": plain `generate()` (a growing KV cache, eager). "static": a
# preallocated KV cache, which transformers compiles (torch.compile, CUDA graphs) on a GPU: the fair
# baseline an inference engine would give CoT. Prompts are left-padded to a multiple of this many tokens
# so the static cache (and its compiled graph) keeps one shape per batch size.
CACHE_MODES = ("dynamic", "static")
STATIC_PROMPT_MULTIPLE = 64


class CotRunner:
    """Batched generation with the base causal LM that the export's manifest names."""

    def __init__(self, name: str, manifest: Manifest, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                 cache: str = "dynamic"):
        from transformers import AutoModelForCausalLM

        if cache not in CACHE_MODES:
            raise ValueError(f"CoT cache must be one of {CACHE_MODES}, got {cache!r}")
        self.name, self.manifest, self.cache = name, manifest, cache
        path = base_model_path(name, manifest)
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "left"  # prompts end where decoding starts
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def generate(self, items: Sequence[CotItem], step: Callable[[], list[bool]] | None = None
                 ) -> list[CotResult | Exception]:
        """Decode items; those with equal parameters share one `generate()` call. A group whose call
        raises gets the exception as each of its results (the batcher fails only those requests): one
        caller's parameters must not fail the other requests that happen to share the batch.

        Args:
            step: called between decode steps (and before each group); it may run other work on this
                thread (the batcher's classification passes) and returns, per item, whether its caller
                has left. A group whose callers have all left stops decoding at once; its results are
                `DeadlineExceeded` (read only by a caller whose deadline passed a moment ago).
        """
        results: list[CotResult | Exception | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: hash(items[i].params))
        for params, group in groupby(order, key=lambda i: items[i].params):
            idx = list(group)
            stop = _StopWhenAllLeft(step, idx) if step is not None else None
            try:
                if stop is not None and stop.all_left():
                    out: list[CotResult | Exception] = [stop.error()] * len(idx)
                else:
                    out = list(self._generate_group([items[i].ids for i in idx], params, stop))
                    if stop is not None and stop.stopped:
                        out = [stop.error()] * len(idx)  # cut short: not an answer anyone may read
            except Exception as exc:  # noqa: BLE001 -- handed to those requests' futures, logged there
                out = [exc] * len(idx)
            for i, r in zip(idx, out):
                results[i] = r
        return results  # type: ignore[return-value]

    def _generate_group(self, prompts: list[list[int]], p: GenParams,
                        stop: "_StopWhenAllLeft | None" = None) -> list[CotResult]:
        multiple = STATIC_PROMPT_MULTIPLE if self.cache == "static" else None
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt", padding=True,
                                   pad_to_multiple_of=multiple)
        kwargs = {"do_sample": p.temperature > 0, "max_new_tokens": p.max_new_tokens,
                  "pad_token_id": self.tokenizer.pad_token_id}
        if self.cache == "static":
            kwargs["cache_implementation"] = "static"
        if stop is not None:  # a criterion that only ever says "go on" leaves the decoded tokens as they were
            kwargs["stopping_criteria"] = [stop]
        if p.min_new_tokens:
            kwargs["min_new_tokens"] = p.min_new_tokens
        if p.temperature > 0:
            kwargs.update(temperature=p.temperature, top_p=p.top_p)
            if p.seed is not None:
                torch.manual_seed(p.seed)
        out = self.model.generate(input_ids=batch["input_ids"].to(self.device),
                                  attention_mask=batch["attention_mask"].to(self.device), **kwargs)
        new = out[:, batch["input_ids"].shape[1]:].cpu()
        results = []
        eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        for row in new.tolist():
            n = next((i for i, t in enumerate(row) if t in eos), len(row))
            text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
            results.append(CotResult(parse_answer(text, self.manifest.label_words), text, n + (n < len(row))))
        return results


class _StopWhenAllLeft(StoppingCriteria):
    """`generate()` calls this after every decode step, on the torch thread: the moment to let queued
    classification passes run (`step` does) and to stop a group nobody waits for any more (issue 23,
    item 9: a classify waited 6.8 s for a decode whose client had hung up). Rows stop together, only
    when every caller of the group has left: stopping some rows would save nothing in a static batch."""

    def __init__(self, step: Callable[[], list[bool]], rows: list[int]):
        self.step, self.rows = step, rows
        self.stopped = False

    def all_left(self) -> bool:
        gone = self.step()
        return all(gone[i] for i in self.rows)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.stopped = self.stopped or self.all_left()
        return torch.full((input_ids.shape[0],), self.stopped, dtype=torch.bool, device=input_ids.device)

    @staticmethod
    def error() -> Exception:
        return DeadlineExceeded("decoding stopped: every caller of this generation batch left or passed its deadline")
