"""Request items → token ids (`InputEncoder`, what a front end needs), and the pooled classifier on a
batch (`ModelRunner`, what the engine needs). Synchronous; no asyncio, no HTTP."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from contract.encoding import encode_bounded, load_tokenizer
from contract.export_reader import LoadedModel, check_export, load_export
from contract.model import DTYPES, pad_batch
from contract.tasks import TaskError
from contract.tasks.base import text_problem

from .errors import InvalidInput

log = logging.getLogger("dhrd.engine")


@dataclass
class Encoded:
    ids: list[int]
    truncated: bool


class InputEncoder:
    """An export's task, template and tokenizer: request items → token ids. No weights: a front-end
    process holds only this, and sends the ids to the engine."""

    def __init__(self, manifest, task, tokenizer):
        self.manifest = manifest
        self.task = task
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id

    @classmethod
    def from_export(cls, path: Path, verify_hashes: bool = False) -> "InputEncoder":
        manifest, task = check_export(Path(path), verify_hashes)
        return cls(manifest, task, load_tokenizer(path))

    def format(self, item: str | dict[str, Any], index: int) -> str:
        """Pre-formatted text passes through; a fields object is checked against the task's declaration
        and formatted by its template. Raises InvalidInput naming `input.<index>[.<field>]`."""
        if isinstance(item, str):
            problem = "is empty" if not item.strip() else text_problem(item)
            if problem:
                raise InvalidInput(f"input[{index}] {problem}", field=f"input.{index}")
            return item
        try:
            self.task.check_fields(item)
            return self.task.format(item)
        except TaskError as exc:
            where = f"input.{index}" + (f".{exc.field}" if exc.field else "")
            raise InvalidInput(f"input[{index}] (task {self.task.name!r}): {exc}", field=where) from exc
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a template's own check
            raise InvalidInput(f"input[{index}] (task {self.task.name!r}): {exc}", field=f"input.{index}") from exc

    def encode(self, item: str | dict[str, Any], index: int, truncate: bool, limit: int | None = None) -> Encoded:
        """Token ids of one request item; raises InvalidInput naming the item."""
        text = self.format(item, index)
        max_length = min(limit or self.manifest.max_length, self.manifest.max_length)
        # Bounded by max_length, not by the text (a 1.9 MB input must not cost a second of tokenising),
        # and tokenised once: a refusal below reuses the count when the whole text was tokenised.
        ids, truncated, count = encode_bounded(self.tokenizer, text, max_length)
        if truncated and not truncate:
            size = f"{count} tokens" if count is not None else f"more than {max_length} tokens ({len(text)} characters)"
            raise InvalidInput(f"input[{index}] has {size}, over the model's limit of {max_length}; "
                               "send truncate=true to cut its beginning", field=f"input.{index}")
        return Encoded(ids, truncated)


class ModelRunner(InputEncoder):
    """One served classifier: backbone + pooled head from an export (never an LM head)."""

    def __init__(self, loaded: LoadedModel, device: str = "cpu", compile: bool = False):
        super().__init__(loaded.manifest, loaded.task, loaded.tokenizer)
        self.model = compiled(loaded.model) if compile else loaded.model
        self.device = torch.device(device)
        self.graphs = None  # a CudaGraphClassifier once captured (use_cuda_graphs)
        self.eager_passes = 0  # forward passes no captured bucket held (CUDA graphs on)

    @classmethod
    def from_export(cls, path: Path, dtype: str = "bfloat16", device: str = "cpu", verify_hashes: bool = True,
                    compile: bool = False, allow_missing_digest: bool = False) -> "ModelRunner":
        return cls(load_export(path, dtype=DTYPES[dtype], device=device, verify_hashes=verify_hashes,
                               allow_missing_digest=allow_missing_digest), device, compile)

    def use_cuda_graphs(self, max_batch_size: int, max_batch_tokens: int) -> bool:
        """Capture the classifier as CUDA graphs (graphs.py); on any failure keep eager and say why."""
        from .graphs import CudaGraphClassifier

        if self.device.type != "cuda" or self.manifest.pooling != "last":
            log.info("CUDA graphs not used (device %s, pooling %s)", self.device, self.manifest.pooling)
            return False
        try:
            graphs = CudaGraphClassifier(self.model, self.pad_id, self.device, max_batch_size,
                                         self.manifest.max_length, max_batch_tokens)
            graphs.capture()
        except Exception:  # an eager service beats no service; the log and the benchmark say which ran
            log.warning("CUDA graph capture failed; serving eager", exc_info=True)
            return False
        self.graphs = graphs
        return True

    def launch(self, batch: Sequence[Sequence[int]]):
        """Start a forward pass and return without waiting for the device (CUDA graphs only): an object
        whose `result()` gives what `predict` gives. The batcher pipelines with it (batcher.py)."""
        from .graphs import Ready

        launched = self.graphs.launch(batch) if self.graphs is not None else None
        return launched if launched is not None else Ready(self.predict(batch))

    @torch.inference_mode()
    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities for a batch of token id lists (padded here, to the batch's longest)."""
        if self.graphs is not None:
            probs = self.graphs.predict(batch)
            if probs is not None:
                return probs
            self.eager_passes += 1
        ids, mask = pad_batch(batch, self.pad_id)
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
    import os

    # Inductor's on-disk caches live beside the base models, not in /tmp, so they survive a reboot (in a
    # container, mount a volume at $DHRD_HOME or set TORCHINDUCTOR_CACHE_DIR). Measured, they save
    # little: 231 s cold, 213 s warm (BENCHMARKS.md, "--compile start-up").
    home = Path(os.environ.get("DHRD_HOME") or Path.home() / ".cache" / "dhrd")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(home / "inductor"))
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # process-wide; only compiled graphs read it
    inductor_config.fx_graph_cache = True
    return torch.compile(model, dynamic=True)
