"""The model runner: tokenise inputs and run the pooled classifier on a batch. Synchronous; no asyncio, no HTTP."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from training import contract
from training.tasks import TaskError

from .errors import InvalidInput
from .loader import LoadedModel, load_export

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Encoded:
    ids: list[int]
    truncated: bool


class ModelRunner:
    """One served classifier: backbone + pooled head from an export (never an LM head)."""

    def __init__(self, name: str, loaded: LoadedModel, device: str = "cpu", compile: bool = False):
        self.name = name
        self.loaded = loaded
        self.manifest = loaded.manifest
        self.task = loaded.task
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        if compile:
            self.model = compiled(self.model)
        self.device = torch.device(device)
        self.pad_id = self.tokenizer.pad_token_id
        self.dtype = next(self.model.parameters()).dtype

    @classmethod
    def from_export(cls, name: str, path: Path, dtype: str = "bfloat16", device: str = "cpu",
                    verify_hashes: bool = True, compile: bool = False) -> "ModelRunner":
        return cls(name, load_export(path, dtype=DTYPES[dtype], device=device, verify_hashes=verify_hashes), device,
                   compile)

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def format(self, item: str | dict[str, Any], index: int) -> str:
        """Pre-formatted text passes through; a fields object is formatted by the task's template."""
        if isinstance(item, str):
            if not item.strip():
                raise InvalidInput(f"input[{index}] is empty", field=f"input.{index}")
            return item
        unknown = sorted(set(item) - set(self.task.fields))
        if unknown:
            raise InvalidInput(f"input[{index}]: unknown field(s) {unknown} for task {self.task.name!r}; "
                               f"expected {list(self.task.fields)}", field=f"input.{index}.{unknown[0]}")
        try:
            return self.task.format(item)
        except (TaskError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidInput(f"input[{index}]: {exc}", field=f"input.{index}") from exc

    def encode(self, item: str | dict[str, Any], index: int, truncate: bool, limit: int | None = None) -> Encoded:
        text = self.format(item, index)
        max_length = min(limit or self.manifest.max_length, self.manifest.max_length)
        ids, truncated = contract.encode_input(self.tokenizer, text, max_length)
        if truncated and not truncate:
            full = len(self.tokenizer(text)["input_ids"])
            raise InvalidInput(f"input[{index}] has {full} tokens, over the model's limit of {max_length}; "
                               "send truncate=true to cut its beginning", field=f"input.{index}")
        return Encoded(ids, truncated)

    @torch.inference_mode()
    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities for a batch of token id lists (padded here, to the batch's longest)."""
        ids, mask = contract.pad_batch(batch, self.pad_id)
        logits = self.model(ids.to(self.device), mask.to(self.device))
        return logits.float().softmax(-1).cpu().tolist()

    def warmup(self) -> None:
        """One tiny and one long-ish forward pass so first requests do not pay allocation (or, compiled,
        compilation: batch 1 and batch > 1 are separate graphs) costs."""
        probe = self.tokenizer("warm up")["input_ids"]
        self.predict([probe])
        self.predict([probe * 16] * 4)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` for inference: inductor fuses the elementwise ops (norms, rotary, SiLU) that
    are a third of a 576-wide model's CPU time, and freezing folds the weights in as constants so
    oneDNN can prepack them. Dynamic shapes: one graph serves every (batch, length)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # process-wide; only compiled graphs read it
    return torch.compile(model, dynamic=True)
