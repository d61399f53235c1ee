"""CUDA graphs for the pooled classifier: one kernel launch per forward pass instead of hundreds.

Eager PyTorch spends ~20 ms of Python per forward pass of a 30-layer model launching kernels, whatever
the batch: on a GPU that, not the device, bounds a classifier service. At start-up the classifier is
captured once per (batch, length) bucket (powers of two up to the batch limits, lengths from 16 up to
the model's max_length, within max_batch_tokens); a batch is right-padded up to the smallest bucket
that holds it and replayed. The captured computation is `PooledClassifier.forward_right_padded`: no
attention mask, so no host-side checks and one shape per bucket. A batch no bucket holds runs eager.

`StaticShapeClassifier` holds the bucketing and the static buffers and runs the computation directly:
it is the CPU-testable half. `CudaGraphClassifier` adds capture and replay.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from contract.model import PooledClassifier

log = logging.getLogger("dhrd.engine")

MIN_LENGTH_BUCKET = 16


def powers_of_two(limit: int, start: int = 1) -> list[int]:
    """start, 2·start, 4·start, … below `limit`, then `limit` itself (so the largest allowed size is a bucket)."""
    sizes, n = [], start
    while n < limit:
        sizes.append(n)
        n *= 2
    return sizes + [limit]


def smallest_holding(buckets: Sequence[int], n: int) -> int | None:
    return next((b for b in buckets if b >= n), None)


class StaticShapeClassifier:
    """Batches padded up to fixed (batch, length) buckets, each with its own static input buffers."""

    def __init__(self, model: PooledClassifier, pad_id: int, device: torch.device, max_batch_size: int,
                 max_length: int, max_batch_tokens: int):
        self.model, self.pad_id, self.device = model, pad_id, device
        self.batch_buckets = powers_of_two(max_batch_size)
        self.length_buckets = powers_of_two(max_length, MIN_LENGTH_BUCKET) if max_length > MIN_LENGTH_BUCKET \
            else [max_length]
        self.max_batch_tokens = max_batch_tokens
        self.shapes = [(b, t) for b in self.batch_buckets for t in self.length_buckets if b * t <= max_batch_tokens]
        self._inputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def bucket(self, batch: Sequence[Sequence[int]]) -> tuple[int, int] | None:
        """The smallest captured (batch, length) shape that holds `batch`, or None (run it eager)."""
        b = smallest_holding(self.batch_buckets, len(batch))
        t = smallest_holding(self.length_buckets, max(len(s) for s in batch))
        return (b, t) if b is not None and t is not None and b * t <= self.max_batch_tokens else None

    def inputs(self, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The static (ids, last_index) buffers of a shape; a captured graph reads exactly these tensors."""
        if shape not in self._inputs:
            b, t = shape
            self._inputs[shape] = (torch.full((b, t), self.pad_id, dtype=torch.long, device=self.device),
                                   torch.zeros(b, dtype=torch.long, device=self.device))
        return self._inputs[shape]

    def fill(self, batch: Sequence[Sequence[int]], shape: tuple[int, int]) -> None:
        """Right-pad `batch` into the shape's buffers (one host→device copy each); rows past the batch are
        padding whose results are dropped."""
        b, t = shape
        host_ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        host_index = torch.zeros(b, dtype=torch.long)
        for i, seq in enumerate(batch):
            host_ids[i, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            host_index[i] = len(seq) - 1
        ids, index = self.inputs(shape)
        pin = self.device.type == "cuda"
        ids.copy_(host_ids.pin_memory() if pin else host_ids, non_blocking=pin)
        index.copy_(host_index.pin_memory() if pin else host_index, non_blocking=pin)

    def compute(self, shape: tuple[int, int]) -> torch.Tensor:
        ids, index = self.inputs(shape)
        return self.model.forward_right_padded(ids, index).softmax(-1)

    @torch.inference_mode()
    def predict(self, batch: Sequence[Sequence[int]]) -> list[list[float]] | None:
        """Class probabilities, or None when no bucket holds the batch (the caller runs it eager)."""
        shape = self.bucket(batch)
        if shape is None:
            return None
        self.fill(batch, shape)
        return self.run(shape)[:len(batch)].cpu().tolist()

    def run(self, shape: tuple[int, int]) -> torch.Tensor:
        return self.compute(shape)


class CudaGraphClassifier(StaticShapeClassifier):
    """Every bucket captured as a CUDA graph at start-up; a forward pass is one replay."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture largest shapes first, all in one memory pool: replays never overlap (one engine thread),
        so graphs may share their intermediate memory, and each output is copied out before the next."""
        pool = None
        for shape in sorted(self.shapes, key=lambda s: s[0] * s[1], reverse=True):
            self.inputs(shape)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the graph: lazy inits, cuBLAS workspaces
                for _ in range(2):
                    self.compute(shape)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.compute(shape)
            pool = graph.pool()
            self._graphs[shape] = (graph, out)
        torch.cuda.synchronize(self.device)
        log.info("captured %d CUDA graphs (batch %s × length %s, ≤ %d tokens)", len(self._graphs),
                 self.batch_buckets, self.length_buckets, self.max_batch_tokens)

    def run(self, shape: tuple[int, int]) -> torch.Tensor:
        graph, out = self._graphs[shape]
        graph.replay()
        return out

    @torch.inference_mode()
    def launch(self, batch: Sequence[Sequence[int]]) -> "Launched | None":
        """Copy the batch in, replay, and start copying the probabilities out, all queued on the stream;
        returns without waiting for the device (None: no bucket holds the batch). The static buffers may
        be refilled by the next launch at once: stream order puts that copy after this replay and this
        copy-out, and pinned staging memory is not reused before its copy ran (torch's host allocator)."""
        shape = self.bucket(batch)
        if shape is None:
            return None
        self.fill(batch, shape)
        out = self.run(shape)
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        host.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
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
