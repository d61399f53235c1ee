"""CUDA graphs for the pooled classifier over packed batches: one launch per forward pass, no padding.

Eager PyTorch spends ~20 ms of Python per forward pass of a 30-layer model launching kernels, whatever
the batch: on a GPU that, not the device, bounds a classifier service. At start-up the packed classifier
(`PooledClassifier.forward_packed`) is captured once per *total-token* bucket, a fine list as vLLM V1
captures its flat token batches (`token_buckets`: steps of 16 tokens, or of 1/8 of the size past 128, so
the tail of pad tokens is under 16 tokens or 12.5 % of a pass), every bucket holding up to `max_batch_size` sequences. A batch is
packed into the smallest bucket that holds its tokens; its sequence boundaries (cu_seqlens) and last-token
indices are static input buffers like its token ids. Attention is flash attention's varlen kernel: no
mask, no host sync. A batch no bucket holds runs eager, and is counted (`dhrd_eager_passes_total`).

Capture hygiene, as vLLM and SGLang do it: the garbage collector runs once, then is frozen and disabled for
the whole capture, and the per-graph gc.collect / empty_cache that torch's capture context does are no-ops.
The finisher thread waits for results on blocking events (it sleeps instead of spinning on a core).

`StaticShapeClassifier` holds the bucketing and the static buffers and runs the computation directly:
it is the CPU-testable half. `CudaGraphClassifier` adds capture and replay.
"""
from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from typing import Sequence
from unittest import mock

import torch

from contract.model import PooledClassifier, pack_batch

log = logging.getLogger("dhrd.engine")

MIN_TOKEN_BUCKET = 16
STEPS_PER_DOUBLING = 8  # buckets between n and 2n: the pad tail of a pass stays under 1/8 of it


def token_buckets(limit: int, smallest: int = MIN_TOKEN_BUCKET) -> list[int]:
    """Total-token sizes to capture: multiples of 16 up to 128, then 8 evenly spaced sizes per doubling
    (steps of 16 up to 256, 32 up to 512, 64 up to 1024, …), ending with `limit` itself."""
    sizes, n = [], smallest
    while n < limit:
        sizes.append(n)
        n += max(smallest, 1 << max(0, (n // STEPS_PER_DOUBLING).bit_length() - 1))
    return sizes + [limit]


def smallest_holding(buckets: Sequence[int], n: int) -> int | None:
    return next((b for b in buckets if b >= n), None)


class StaticShapeClassifier:
    """Batches packed into fixed total-token buckets, each with its own static input buffers.

    Args:
        max_batch_size: sequences a bucket holds (the batcher's cap).
        max_length: the export's longest sequence; the largest bucket holds at least one such sequence.
        max_batch_tokens: the batcher's token budget; the largest bucket holds a full budget.
    """

    def __init__(self, model: PooledClassifier, pad_id: int, device: torch.device, max_batch_size: int,
                 max_length: int, max_batch_tokens: int):
        self.model, self.pad_id, self.device = model, pad_id, device
        self.max_sequences, self.max_length = max_batch_size, max_length
        # No batch holds more than max_batch_size sequences of max_length tokens: no bucket beyond that.
        self.token_buckets = token_buckets(min(max(max_batch_tokens, max_length), max_batch_size * max_length))
        self._inputs: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def shapes(self) -> list[int]:
        return self.token_buckets

    def bucket(self, batch: Sequence[Sequence[int]]) -> int | None:
        """The smallest captured token bucket that holds `batch`, or None (run it eager)."""
        if len(batch) > self.max_sequences:
            return None
        return smallest_holding(self.token_buckets, sum(len(s) for s in batch))

    def miss_reason(self, batch: Sequence[Sequence[int]]) -> str:
        """Why no bucket holds `batch` (the eager-pass metric's label): "sequences" or "tokens"."""
        return "sequences" if len(batch) > self.max_sequences else "tokens"

    def max_seqlen(self, tokens: int) -> int:
        """The static bound the attention kernel is given for a bucket: the longest real sequence, or the
        tail of pad tokens (shorter than the step below this bucket, or the bucket would be a smaller one)."""
        below = max([b for b in self.token_buckets if b < tokens], default=0)
        return min(tokens, max(self.max_length, tokens - below))

    def inputs(self, tokens: int) -> dict[str, torch.Tensor]:
        """The static buffers of a bucket; a captured graph reads exactly these tensors. They start out
        holding a valid batch (sequences of pad tokens), so a warm-up or capture pass reads sane boundaries."""
        if tokens not in self._inputs:
            s, d = self.max_sequences, self.device
            self._inputs[tokens] = {
                "input_ids": torch.empty(tokens, dtype=torch.long, device=d),
                "position_ids": torch.empty(tokens, dtype=torch.long, device=d),
                "cu_seqlens": torch.empty(s + 2, dtype=torch.int32, device=d),
                "last_index": torch.empty(s, dtype=torch.long, device=d),
            }
            longest = self.max_seqlen(tokens)
            self.fill([[self.pad_id] * min(longest, tokens - start) for start in range(0, tokens, longest)], tokens)
        return self._inputs[tokens]

    def fill(self, batch: Sequence[Sequence[int]], tokens: int) -> None:
        """Pack `batch` into the bucket's buffers (one host→device copy each); the tail of pad tokens is a
        sequence of its own, and rows past the batch read token 0 and are dropped."""
        packed = pack_batch(batch, self.pad_id, tokens, self.max_sequences, self.max_seqlen(tokens))
        pin = self.device.type == "cuda"
        for name, buffer in self.inputs(tokens).items():
            host = getattr(packed, name)
            buffer.copy_(host.pin_memory() if pin else host, non_blocking=pin)

    def compute(self, tokens: int) -> torch.Tensor:
        """(max_batch_size, K) probabilities from the bucket's buffers."""
        b = self.inputs(tokens)
        return self.model.forward_packed(b["input_ids"], b["position_ids"], b["cu_seqlens"], b["last_index"],
                                         self.max_seqlen(tokens)).softmax(-1)

    @torch.inference_mode()
    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]] | None:
        """Class probabilities, or None when no bucket holds the batch (the caller runs it eager)."""
        tokens = self.bucket(batch)
        if tokens is None:
            return None
        self.fill(batch, tokens)
        return self.run(tokens)[:len(batch)].cpu().tolist()

    def run(self, tokens: int) -> torch.Tensor:
        return self.compute(tokens)


@contextmanager
def frozen_gc():
    """The garbage collector during capture: one collection first, then every object alive is frozen (never
    scanned again) and collection is off, and the gc.collect() / empty_cache() torch's capture context
    would run per graph do nothing (vLLM's freeze_gc and its capture patches). Restored afterwards."""
    gc.collect()
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        with mock.patch("gc.collect", lambda *args: 0), mock.patch("torch.cuda.empty_cache", lambda: None):
            yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


class CudaGraphClassifier(StaticShapeClassifier):
    """Every token bucket captured as a CUDA graph at start-up; a forward pass is one replay."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture largest buckets first, all in one memory pool: replays never overlap (one engine thread),
        so graphs may share their intermediate memory, and each output is copied out before the next."""
        pool = None
        with frozen_gc():
            for tokens in sorted(self.token_buckets, reverse=True):
                self.inputs(tokens)
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):  # warm-up outside the graph: lazy inits, cuBLAS workspaces
                    for _ in range(2):
                        self.compute(tokens)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self.compute(tokens)
                pool = graph.pool()
                self._graphs[tokens] = (graph, out)
        torch.cuda.synchronize(self.device)
        log.info("captured %d CUDA graphs (packed, %d..%d tokens, ≤ %d sequences)", len(self._graphs),
                 self.token_buckets[0], self.token_buckets[-1], self.max_sequences)

    def run(self, tokens: int) -> torch.Tensor:
        graph, out = self._graphs[tokens]
        graph.replay()
        return out

    @torch.inference_mode()
    def launch(self, batch: Sequence[Sequence[int]]) -> "Launched | None":
        """Copy the batch in, replay, and start copying the probabilities out, all queued on the stream;
        returns without waiting for the device (None: no bucket holds the batch). The static buffers may
        be refilled by the next launch at once: stream order puts that copy after this replay and this
        copy-out, and pinned staging memory is not reused before its copy ran (torch's host allocator)."""
        tokens = self.bucket(batch)
        if tokens is None:
            return None
        self.fill(batch, tokens)
        out = self.run(tokens)
        pin = self.device.type == "cuda"
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=pin)
        host.copy_(out, non_blocking=pin)
        # Blocking: the finisher thread sleeps in synchronize() instead of spinning a core, which the
        # front ends' and the engine loop's threads need.
        done = torch.cuda.Event(blocking=True)
        done.record()
        return Launched(done, host, len(batch))


class Launched:
    """A forward pass queued on the device; `result()` waits for it (in the finisher thread)."""

    def __init__(self, done, host: torch.Tensor, n: int):
        self.done, self.host, self.n = done, host, n

    def result(self) -> list[list[float]]:
        self.done.synchronize()
        return self.host[:self.n].tolist()


class Ready:
    """A result computed already (a batch no bucket held, run eager), with the same `result()`."""

    def __init__(self, results: list[list[float]]):
        self.results = results

    def result(self) -> list[list[float]]:
        return self.results
