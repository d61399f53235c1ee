"""Chain-of-thought comparison: decode a rationale and answer with the export's *base* causal LM.

This is what DHRD avoids at inference: the same backbone generating up to hundreds of tokens
per input (paper §E.6 defaults: sampling, T=0.1, top_p=0.7, up to 500 new tokens). The base
model is loaded only when the endpoint is enabled; classification never touches an LM head.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Sequence

import torch

from training.contract import Manifest, parse_answer
from training.tasks import Task

from .errors import InvalidInput

COT_PROMPT_VERSION = "cot-v1"
COT_INSTRUCTION = ("{input}\n\nThink step by step in a few sentences, then give your final answer on the last line "
                   "as 'Final Answer: X', where X is one of: {choices}.")


@dataclass(frozen=True)
class GenParams:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None
    min_new_tokens: int = 0


@dataclass
class CotItem:
    """One sequence to decode; `len()` is its prompt length so the batcher can budget tokens."""

    ids: list[int]
    params: GenParams

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class CotResult:
    label: int
    parsed: bool
    text: str
    generated_tokens: int


class CotRunner:
    """Batched generation with the base causal LM that the export's manifest names."""

    def __init__(self, name: str, manifest: Manifest, task: Task, dtype: torch.dtype = torch.bfloat16,
                 device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(manifest.base_model.get("path") or "")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model {name!r}: base model {path} named in the manifest is not available; "
                                    "the CoT endpoint needs it (run `dhrd base-model` or disable --cot)")
        self.name, self.task, self.manifest = name, task, manifest
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        self.device = torch.device(device)

    def prompt_ids(self, text: str, index: int) -> list[int]:
        choices = ", ".join(self.manifest.label_words)
        content = COT_INSTRUCTION.format(input=text, choices=choices)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=True)["input_ids"]
        ids = self.tokenizer(content)["input_ids"]
        if not ids:
            raise InvalidInput(f"input[{index}] is empty", field=f"input.{index}")
        return ids

    @torch.inference_mode()
    def generate(self, items: Sequence[CotItem]) -> list[CotResult]:
        """Decode items; those with equal parameters share one `generate()` call."""
        results: list[CotResult | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: hash(items[i].params))
        for params, group in groupby(order, key=lambda i: items[i].params):
            idx = list(group)
            for i, r in zip(idx, self._generate_group([items[i].ids for i in idx], params)):
                results[i] = r
        return results  # type: ignore[return-value]

    def _generate_group(self, prompts: list[list[int]], p: GenParams) -> list[CotResult]:
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt", padding=True)
        kwargs = {"do_sample": p.temperature > 0, "max_new_tokens": p.max_new_tokens,
                  "pad_token_id": self.tokenizer.pad_token_id}
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
            label = parse_answer(text, self.manifest.label_words)
            results.append(CotResult(label if label is not None else 0, label is not None, text, n + (n < len(row))))
        return results
