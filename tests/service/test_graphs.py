"""CUDA graphs: the packed, token-bucketed computation they capture gives the eager service's answers, every
batch the batcher cuts fits a bucket, and capture is hygienic (no host sync, no mask, gc frozen).
The bucketing, static buffers and capture loop run on CPU here; real capture and replay need a CUDA device."""
from __future__ import annotations

import gc
import random
from contextlib import contextmanager

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from service.device.graphs import CudaGraphClassifier, StaticShapeClassifier, smallest_holding, token_buckets
from service.device.runner import ModelRunner

FIXTURE = "tests/fixtures/export-v1-cb"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def batches(runner, seed=0):
    rng = random.Random(seed)
    vocab = runner.tokenizer.vocab_size if hasattr(runner.tokenizer, "vocab_size") else 100
    return [[[rng.randrange(3, min(vocab, 200)) for _ in range(rng.randint(1, 40))] for _ in range(n)]
            for n in (1, 3, 8, 13)]


def test_token_buckets_are_a_fine_list_up_to_and_including_the_limit():
    assert token_buckets(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert token_buckets(300) == [16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288, 300]
    buckets = token_buckets(8192)
    assert buckets[-1] == 8192 and len(buckets) < 64 and buckets == sorted(set(buckets))
    # the tail of pad tokens a bucket adds is under 16 tokens or 1/8 of the pass
    assert all(b - a <= max(16, b / 8) for a, b in zip(buckets, buckets[1:]))
    assert smallest_holding([16, 32, 48], 33) == 48 and smallest_holding([16, 32], 33) is None


def test_bucketed_static_buffers_give_the_eager_probabilities_and_reuse_buffers():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    static = StaticShapeClassifier(runner.model, runner.pad_id, torch.device("cpu"), max_batch_size=16,
                                   max_length=runner.manifest.max_length, max_batch_tokens=16 * 64)
    for batch in batches(runner) * 2:  # twice: a reused buffer must not keep the last batch's tokens
        got = static.predict(batch)
        torch.testing.assert_close(torch.tensor(got), torch.tensor(runner.predict(batch)), rtol=1e-5, atol=1e-5)
    assert static.bucket([[1] * 13] * 3) == 48
    assert static.bucket([[1] * 17] * 16) == 288
    assert static.bucket([[1] * 65] * 16) is None and static.miss_reason([[1] * 65] * 16) == "tokens"
    assert static.bucket([[1]] * 17) is None and static.miss_reason([[1]] * 17) == "sequences"
    assert static.bucket([[1] * 512]) == 512  # one sequence of max_length always fits
    assert len(static._inputs) <= len(static.shapes)


def test_largest_bucket_holds_the_budget_or_one_longest_sequence_and_no_more_than_fits():
    assert token_buckets(1024)[-1] == StaticShapeClassifier(None, 0, torch.device("cpu"), 32, 512, 1024).shapes[-1]
    assert StaticShapeClassifier(None, 0, torch.device("cpu"), 32, 512, 256).shapes[-1] == 512
    assert StaticShapeClassifier(None, 0, torch.device("cpu"), 2, 512, 8192).shapes[-1] == 1024


def _pending(n: int):
    from service.engine.batcher import _Pending

    return _Pending([7] * n, None, 0.0)


# (max_batch_size, max_batch_tokens, max_length): the defaults, and GPU settings (loadtest/gpu/, DEPLOY.md).
SETTINGS = [(32, 1024, 512), (64, 8192, 512), (128, 16384, 512), (256, 32768, 2048), (16, 256, 512)]


@pytest.mark.parametrize("max_batch_size, max_batch_tokens, max_length", SETTINGS)
def test_every_batch_the_batcher_cuts_fits_a_captured_bucket(max_batch_size, max_batch_tokens, max_length):
    """Random request streams (what `_collect` hands `_cut`: up to max_batch_size sequences of 1..max_length
    tokens, short-heavy or long-heavy): no batch `_cut` makes may fall to an eager pass."""
    from service.engine.batcher import BatchConfig, Batcher
    from service.metrics import Metrics

    config = BatchConfig(max_batch_size, max_batch_tokens, 5.0, 4096)
    batcher = Batcher("m", lambda b: b, config, None, Metrics())
    static = StaticShapeClassifier(None, 0, torch.device("cpu"), max_batch_size, max_length, max_batch_tokens)
    rng = random.Random(0)
    cut = 0
    for trial in range(400):
        mode = trial % 4
        lengths = [max_length if mode == 3 else
                   rng.randint(1, max_length) if mode == 0 else
                   rng.randint(60, 80) if mode == 1 else  # the kit's 68-token requests
                   min(max_length, int(rng.paretovariate(1.2) * 8)) for _ in range(rng.randint(1, max_batch_size))]
        for batch in batcher._cut([_pending(n) for n in lengths]):
            payloads = [p.payload for p in batch]
            tokens = static.bucket(payloads)
            assert tokens is not None, (len(payloads), sum(map(len, payloads)))
            # and its packing is valid there: the pad tail and every sequence within the kernel's bound
            assert max(tokens - sum(map(len, payloads)), *map(len, payloads)) <= static.max_seqlen(tokens)
            cut += 1
    assert cut > 400


class Spy(TorchDispatchMode):
    """Every op a computation dispatches: the host syncs among them, and any attention mask it builds."""

    SYNCS = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::equal",
             "aten::masked_select", "aten::_unique2", "aten::unique_consecutive", "aten::allclose")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.syncs: list[str] = []
        self.masks: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        self.ops.append(name)
        if name in self.SYNCS:
            self.syncs.append(name)
        if "scaled_dot_product" in name:
            named = dict(zip([a.name for a in func._schema.arguments], args)) | kwargs
            if named.get("attn_mask") is not None:
                self.masks.append((name, tuple(named["attn_mask"].shape)))
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == t.shape[-2] > 1 and (
                    t.dtype == torch.bool or (t.dim() == 4 and t.shape[1] == 1)):
                self.masks.append((name, tuple(t.shape)))
        return out


def test_the_spy_sees_host_syncs_and_masks():
    with Spy() as spy:
        x = torch.ones(3)
        bool((x > 0).all())
        torch.ones(5, 5, dtype=torch.bool).tril()
    assert spy.syncs and spy.masks


@contextmanager
def capture_forced_on(monkeypatch):
    """What transformers sees inside a CUDA graph capture, on CPU: stream capture reported as on."""
    import transformers.masking_utils as masking_utils
    import transformers.utils.import_utils as import_utils

    monkeypatch.setattr(masking_utils, "is_tracing", lambda *a, **k: True)
    monkeypatch.setattr(import_utils, "is_cuda_stream_capturing", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    yield


@pytest.mark.parametrize("forced", [True, False])
def test_the_captured_computation_has_no_host_sync_and_no_attention_mask(monkeypatch, forced):
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    static = StaticShapeClassifier(runner.model, runner.pad_id, torch.device("cpu"), max_batch_size=16,
                                   max_length=runner.manifest.max_length, max_batch_tokens=16 * 64)
    batch = batches(runner)[2]
    tokens = static.bucket(batch)
    static.fill(batch, tokens)
    with torch.inference_mode():
        if forced:
            with capture_forced_on(monkeypatch), Spy() as spy:
                out = static.compute(tokens)
        else:
            with Spy() as spy:
                out = static.compute(tokens)
    assert spy.syncs == [] and spy.masks == []
    assert len(spy.ops) > 20  # the spy saw the forward pass
    torch.testing.assert_close(out[:len(batch)], torch.tensor(runner.predict(batch)), rtol=1e-5, atol=1e-5)


class FakeGraph:
    """torch.cuda.CUDAGraph on CPU: capture is running the computation once; replay does nothing."""

    def __init__(self):
        self.replays = 0

    def pool(self):
        return "pool"

    def replay(self):
        self.replays += 1


class FakeStream:
    def wait_stream(self, other):
        pass


class FakeEvent:
    made: list[dict] = []

    def __init__(self, **kwargs):
        FakeEvent.made.append(kwargs)

    def record(self):
        pass

    def synchronize(self):
        pass


@contextmanager
def fake_capture_context(graph, pool=None):
    """What torch.cuda.graph's __enter__ does per graph, which a capture loop must neutralise."""
    gc.collect()
    torch.cuda.empty_cache()
    yield


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextmanager(lambda: (yield))())
    monkeypatch.setattr(torch.cuda, "graph", fake_capture_context)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)


def test_capture_freezes_gc_once_instead_of_collecting_per_graph(monkeypatch, fake_cuda):
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    graphs = CudaGraphClassifier(runner.model, runner.pad_id, torch.device("cpu"), max_batch_size=4,
                                 max_length=64, max_batch_tokens=128)
    collects, empties, during = [], [], []
    monkeypatch.setattr(gc, "collect", lambda *a: collects.append(1) or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: empties.append(1))
    forward_packed = runner.model.forward_packed

    def watched(*args):
        during.append((gc.isenabled(), gc.get_freeze_count() > 0))
        return forward_packed(*args)

    monkeypatch.setattr(runner.model, "forward_packed", watched)
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    graphs.capture()
    assert len(graphs._graphs) == len(graphs.token_buckets) == 8
    assert len(collects) <= 1 and empties == []  # one collection before, none per graph
    assert during and all(d == (False, True) for d in during)  # collection off, survivors frozen
    assert (gc.isenabled(), gc.get_freeze_count()) == (enabled, frozen)  # restored

    FakeEvent.made.clear()
    launched = graphs.launch([[5, 6, 7], [8, 9]])
    assert FakeEvent.made == [{"blocking": True}]  # the finisher thread sleeps, not spins, on the result
    assert len(launched.result()) == 2 and graphs._graphs[16][0].replays == 1


def test_runner_counts_real_and_computed_tokens_padded_and_eager_passes():
    from service.metrics import Metrics

    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    metrics = Metrics()
    runner.observe_with(metrics, "cb")

    def value(name, **labels):
        return metrics.registry.get_sample_value(name, {"model": "cb", **labels}) or 0

    runner.predict([[5] * 10, [6] * 3])  # packed: no padding computed
    assert value("dhrd_real_tokens_total") == value("dhrd_computed_tokens_total") == 13
    runner.predict([[5] * 4] * 3)  # equal lengths: the padded forward, counted with its reason
    assert value("dhrd_padded_passes_total", reason="unpadded") == 1
    assert value("dhrd_computed_tokens_total") == 25
    runner.graphs = StaticShapeClassifier(runner.model, runner.pad_id, torch.device("cpu"), max_batch_size=2,
                                          max_length=64, max_batch_tokens=64)
    runner.predict([[5] * 10, [6] * 3])  # a bucket of 16 tokens: 3 of them padding
    assert (value("dhrd_real_tokens_total"), value("dhrd_computed_tokens_total")) == (38, 41)
    runner.predict([[5] * 2, [6] * 3, [7] * 4])  # three sequences: over the buckets' two
    assert value("dhrd_eager_passes_total", reason="sequences") == 1 and runner.eager_passes == 1
    assert value("dhrd_eager_passes_total", reason="tokens") == 0


def test_compiled_runner_runs_padded_and_a_backbone_packing_cannot_run_is_served_padded(monkeypatch):
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    assert runner.padded_reason([[1, 2], [3]]) is None
    monkeypatch.setattr(runner.model, "forward_packed", lambda *a: (_ for _ in ()).throw(ValueError("no")))
    runner.warmup()
    assert runner.packing_off == "unsupported" and runner.padded_reason([[1, 2], [3]]) == "unsupported"
    assert len(runner.predict([[1, 2], [3]])) == 2


def test_cuda_graphs_are_not_used_on_cpu():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    assert runner.use_cuda_graphs(8, 512) is False and runner.graphs is None


@needs_cuda
def test_cuda_graph_replays_give_the_eager_probabilities():
    runner = ModelRunner.from_export(FIXTURE, dtype="bfloat16", device="cuda")
    eager = [runner.predict(b) for b in batches(runner)]
    assert runner.use_cuda_graphs(16, 16 * 64) is True
    for batch, expected in zip(batches(runner), eager):
        torch.testing.assert_close(torch.tensor(runner.predict(batch)), torch.tensor(expected), rtol=2e-2, atol=2e-2)
    assert runner.eager_passes == 0
    runner.predict([[5] * 70] * 16)  # no bucket holds 16 × 70 tokens: eager, counted
    assert runner.eager_passes == 1


def test_launch_without_graphs_computes_at_once_with_the_same_result():
    runner = ModelRunner.from_export(FIXTURE, dtype="float32")
    batch = batches(runner)[1]
    assert runner.launch(batch).result() == runner.predict(batch)


@needs_cuda
def test_launched_replays_give_the_eager_probabilities_back_to_back():
    runner = ModelRunner.from_export(FIXTURE, dtype="bfloat16", device="cuda")
    eager = [runner.predict(b) for b in batches(runner)]
    assert runner.use_cuda_graphs(16, 16 * 64)
    launched = [runner.launch(b) for b in batches(runner)]  # all queued before any result is read
    for pending, expected in zip(launched, eager):
        torch.testing.assert_close(torch.tensor(pending.result()), torch.tensor(expected), rtol=2e-2, atol=2e-2)
