"""The pooled classifier on a batch of token ids (`ModelRunner`): the device work of a classification.
Synchronous; no asyncio, no HTTP. Turning request items into ids is the engine's (engine/encoder.py)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch

from contract.export_reader import LoadedModel, load_export
from contract.model import DTYPES, pack_batch, pad_batch

log = logging.getLogger("dhrd.engine")


class ModelRunner:
    """One served classifier: backbone + pooled head from an export (never an LM head).

    A forward pass runs one of three ways. With CUDA graphs captured, a batch is packed into a token
    bucket and replayed (graphs.py). Otherwise it runs eager, packed (`PooledClassifier.forward_packed`: no
    linear layer sees a padding token), or padded to the batch's longest (`PooledClassifier.forward`) when
    packing gains nothing or cannot run: `padded_reason` says which, and every such pass is counted under
    that reason (`dhrd_padded_passes_total`) and logged once per reason.
    """

    # A measuring tool's stand-in for the forward pass, or None (always, in the service): called as
    # `forward_stub(runner, batch)` in place of every pass, warm-up included. Class-wide and set at import,
    # before any runner exists, so an engine process spawned later gets it too (loadtest.frontend.stub_serve: the
    # serving code alone, without the model's arithmetic).
    forward_stub: Callable[["ModelRunner", Sequence[Sequence[int]]], list[list[float]]] | None = None

    def __init__(self, loaded: LoadedModel, device: str = "cpu", compile: bool = False):
        # What the engine builds this model's input encoder from (engine/encoder.py), and what warm-up and
        # packing need: the pad id and the export's max_length.
        self.manifest, self.task, self.tokenizer = loaded.manifest, loaded.task, loaded.tokenizer
        self.pad_id = loaded.tokenizer.pad_token_id
        self.model = compiled(loaded.model) if compile else loaded.model
        self.device = torch.device(device)
        self.graphs = None  # a CudaGraphClassifier once captured (use_cuda_graphs)
        self.eager_passes = 0  # forward passes no captured bucket held (CUDA graphs on)
        # Why every batch runs padded, or None: packing is on. A compiled model was compiled for the padded
        # forward (dynamic shapes); its packed forward would run uncompiled. Which is faster is not measured
        # yet: keeping --compile's measured path is our choice.
        self.packing_off: str | None = "compiled" if compile else None
        self.metrics, self.name = None, loaded.manifest.task  # set by observe_with (the engine)
        self._logged: set[str] = set()

    @classmethod
    def from_export(cls, path: Path, dtype: str = "bfloat16", device: str = "cpu", verify_hashes: bool = True,
                    compile: bool = False, allow_missing_digest: bool = False) -> "ModelRunner":
        return cls(load_export(path, dtype=DTYPES[dtype], device=device, verify_hashes=verify_hashes,
                               allow_missing_digest=allow_missing_digest), device, compile)

    def observe_with(self, metrics, name: str) -> None:
        """Count this runner's passes and tokens on `metrics` (service/metrics.py) under model `name`."""
        self.metrics, self.name = metrics, name

    def use_cuda_graphs(self, max_batch_size: int, max_batch_tokens: int) -> bool:
        """Capture the packed classifier as CUDA graphs (graphs.py); on any failure keep eager and say why."""
        from .graphs import CudaGraphClassifier

        if self.device.type != "cuda" or self.packing_off is not None:
            log.info("CUDA graphs not used (device %s, packing off: %s)", self.device, self.packing_off)
            return False
        if self.model.head.dtype not in (torch.float16, torch.bfloat16):
            log.info("CUDA graphs not used: flash varlen attention needs half precision, not %s", self.model.head.dtype)
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
        whose `result()` gives what `predict` gives. The batcher pipelines with it (engine/batcher.py)."""
        from .graphs import Ready

        launched = self.graphs.launch(batch) if self.graphs is not None else None
        if launched is None:
            return Ready(self.predict(batch))
        self._count_tokens(batch, self.graphs.bucket(batch))
        return launched

    @torch.inference_mode()
    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]]:
        """Class probabilities for a batch of token id lists: a graph replay, else packed, else padded."""
        if self.forward_stub is not None:
            return self.forward_stub(batch)
        if self.graphs is not None:
            probs = self.graphs.predict(batch)
            if probs is not None:
                self._count_tokens(batch, self.graphs.bucket(batch))
                return probs
            self._eager_pass(self.graphs.miss_reason(batch))
        reason = self.padded_reason(batch)
        if reason is not None:
            self._padded_pass(reason)
        return self._eager(batch, packed=reason is None)

    @torch.inference_mode()
    def predict_as(self, batch: Sequence[Sequence[int]], packed: bool) -> list[list[float]]:
        """One eager pass in the layout asked for, whatever `padded_reason` would pick and uncounted: for a
        benchmark that compares the two on the same batches (`loadtest.forward packing`)."""
        return self._eager(batch, packed, count=False)

    def _eager(self, batch: Sequence[Sequence[int]], packed: bool, count: bool = True) -> list[list[float]]:
        if packed:
            p = pack_batch(batch, self.pad_id)
            logits = self.model.forward_packed(p.input_ids.to(self.device), p.position_ids.to(self.device),
                                               p.cu_seqlens.to(self.device), p.last_index.to(self.device),
                                               p.max_seqlen)
            computed = p.input_ids.shape[0]
        else:
            ids, mask = pad_batch(batch, self.pad_id)
            logits = self.model(ids.to(self.device), mask.to(self.device))
            computed = ids.numel()
        if count:
            self._count_tokens(batch, computed)
        return logits.float().softmax(-1).cpu().tolist()

    def padded_reason(self, batch: Sequence[Sequence[int]]) -> str | None:
        """Why `batch` runs padded, or None (packed). "compiled" / "unsupported": packing is off for this
        model. "unpadded": every sequence has the same length, so padding removes nothing and the padded
        forward does the same work without packing's scatter and gather of attention rows (our rule;
        `loadtest.forward attention` measures both)."""
        if self.packing_off is not None:
            return self.packing_off
        if all(len(s) == len(batch[0]) for s in batch):
            return "unpadded"
        return None

    def _count_tokens(self, batch: Sequence[Sequence[int]], computed: int) -> None:
        if self.metrics is not None:
            self.metrics.real_tokens.labels(self.name).inc(sum(len(s) for s in batch))
            self.metrics.computed_tokens.labels(self.name).inc(computed)

    def _eager_pass(self, reason: str) -> None:
        self.eager_passes += 1
        if self.metrics is not None:
            self.metrics.eager_passes.labels(self.name, reason).inc()
        self._log_once(f"eager:{reason}", "a batch no CUDA graph bucket holds ran eager (too many %s); "
                       "dhrd_eager_passes_total counts them", reason)

    def _padded_pass(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.padded_passes.labels(self.name, reason).inc()
        self._log_once(f"padded:{reason}", "a forward pass ran padded, not packed (reason %s); "
                       "dhrd_padded_passes_total counts them", reason)

    def _log_once(self, key: str, message: str, *args) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.info(message, *args)

    def warmup(self) -> None:
        """One tiny and one long-ish forward pass so first requests do not pay allocation (or, compiled,
        compilation: batch 1 and batch > 1 are separate graphs) costs; then one packed pass of unequal
        lengths, bounded by the export's max_length: a backbone the packed forward cannot run (an attention
        that is not transformers' function interface, a sliding window shorter than max_length) is served
        padded, with reason "unsupported"."""
        probe = self.tokenizer("warm up")["input_ids"]
        self.predict([probe])
        self.predict([probe * 16] * 4)
        if self.packing_off is None:
            try:
                p = pack_batch([probe, probe * 3], self.pad_id, max_seqlen=self.manifest.max_length)
                with torch.inference_mode():
                    self.model.forward_packed(p.input_ids.to(self.device), p.position_ids.to(self.device),
                                              p.cu_seqlens.to(self.device), p.last_index.to(self.device),
                                              p.max_seqlen)
            except Exception:
                log.warning("the packed forward pass failed on this model; serving it padded", exc_info=True)
                self.packing_off = "unsupported"


def set_threads(n: int) -> None:
    """torch's intra-op thread count for the calling thread's OpenMP team (call it on the torch thread)."""
    torch.set_num_threads(n)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile` for inference: inductor fuses the elementwise ops (norms, rotary, SiLU) that
    are a third of a 576-wide model's CPU time, and freezing folds the weights in as constants so
    oneDNN can prepack them. Dynamic shapes: one graph serves every (batch, length)."""
    import os

    # Inductor's on-disk caches live beside the base models, not in /tmp, so they survive a reboot (in a
    # container, mount a volume at $DHRD_HOME or set TORCHINDUCTOR_CACHE_DIR). Measured, they save
    # little: 231 s cold, 213 s warm (BENCHMARKS.md, "--compile start-up").
    from contract.export_reader import dhrd_home

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(dhrd_home() / "inductor"))
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # process-wide; only compiled graphs read it
    inductor_config.fx_graph_cache = True
    return torch.compile(model, dynamic=True)
