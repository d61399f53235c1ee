"""CUDA graphs: the mask-free, bucketed computation they capture gives the eager service's answers.
The bucketing and static buffers run on CPU here; capture and replay need a CUDA device."""
from __future__ import annotations

import random

import pytest
import torch

from contract.model import pad_batch
from service.graphs import StaticShapeClassifier, powers_of_two, smallest_holding
from service.runner import ModelRunner

FIXTURE = "tests/fixtures/export-v1-cb"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def batches(runner, seed=0):
    rng = random.Random(seed)
    vocab = runner.tokenizer.vocab_size if hasattr(runner.tokenizer, "vocab_size") else 100
    return [[[rng.randrange(3, min(vocab, 200)) for _ in range(rng.randint(1, 40))] for _ in range(n)]
            for n in (1, 3, 8, 13)]


def test_buckets_are_powers_of_two_up_to_and_including_the_limit():
    assert powers_of_two(24) == [1, 2, 4, 8, 16, 24]
    assert powers_of_two(512, 16) == [16, 32, 64, 128, 256, 512]
    assert powers_of_two(1) == [1]
    assert smallest_holding([1, 2, 4, 8], 3) == 4 and smallest_holding([1, 2, 4], 5) is None


def test_mask_free_forward_of_right_padded_rows_equals_the_masked_forward():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    for batch in batches(runner):
        ids, mask = pad_batch(batch, runner.pad_id)
        with torch.inference_mode():
            masked = runner.model(ids, mask)
            free = runner.model.forward_right_padded(ids, mask.sum(-1) - 1)
        torch.testing.assert_close(free, masked, rtol=1e-5, atol=1e-5)


def test_bucketed_static_buffers_give_the_eager_probabilities_and_reuse_buffers():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    static = StaticShapeClassifier(runner.model, runner.pad_id, torch.device("cpu"), max_batch_size=16,
                                   max_length=runner.manifest.max_length, max_batch_tokens=16 * 64)
    for batch in batches(runner) * 2:  # twice: a reused buffer must not keep the last batch's tokens
        got = static.predict(batch)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(runner.predict(batch)), rtol=1e-5, atol=1e-5)
    assert static.bucket([[1] * 13] * 3) == (4, 16)
    assert static.bucket([[1] * 17] * 16) == (16, 32)
    assert static.bucket([[1] * 65] * 16) is None  # over max_batch_tokens: the runner goes eager
    assert len(static._inputs) <= len(static.shapes)


def test_mean_pooling_is_not_captured():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    runner.model.pooling = "mean"
    with pytest.raises(ValueError, match="last-token pooling"):
        runner.model.forward_right_padded(torch.ones(1, 4, dtype=torch.long), torch.tensor([3]))


def test_cuda_graphs_are_not_used_on_cpu():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    assert runner.use_cuda_graphs(8, 512) is False and runner.graphs is None


@needs_cuda
def test_cuda_graph_replays_give_the_eager_probabilities():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32", device="cuda")
    eager = [runner.predict(b) for b in batches(runner)]
    assert runner.use_cuda_graphs(16, 16 * 64) is True
    for batch, expected in zip(batches(runner), eager):
        torch.testing.assert_close(torch.tensor(runner.predict(batch)), torch.tensor(expected), rtol=1e-4, atol=1e-4)
    assert runner.eager_passes == 0
    runner.predict([[5] * 70] * 16)  # no bucket holds 16 × 70 tokens: eager, counted
    assert runner.eager_passes == 1


def test_launch_without_graphs_computes_at_once_with_the_same_result():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    batch = batches(runner)[1]
    assert runner.launch(batch).result() == runner.predict(batch)


@needs_cuda
def test_launched_replays_give_the_eager_probabilities_back_to_back():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32", device="cuda")
    eager = [runner.predict(b) for b in batches(runner)]
    assert runner.use_cuda_graphs(16, 16 * 64)
    launched = [runner.launch(b) for b in batches(runner)]  # all queued before any result is read
    for pending, expected in zip(launched, eager):
        torch.testing.assert_close(torch.tensor(pending.result()), torch.tensor(expected), rtol=1e-4, atol=1e-4)
