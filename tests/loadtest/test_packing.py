"""The packed-vs-padded benchmark on a task's own inputs: batches cut like the batcher's, both modes on
the same batches, and a padding share that packing removes."""
from __future__ import annotations

from loadtest.packing import cut, measure


def test_batches_are_cut_by_size_and_real_token_budget():
    assert cut([10, 10, 10, 10, 10], max_batch_size=2, max_batch_tokens=100) == [[0, 1], [2, 3], [4]]
    assert cut([60, 50, 40, 70], max_batch_size=8, max_batch_tokens=100) == [[0], [1, 2], [3]]
    assert cut([500], max_batch_size=8, max_batch_tokens=100) == [[0]]  # one input over the budget still goes


def test_packed_and_padded_run_the_same_batches_and_only_padded_computes_padding(tiny_export, data_dir,
                                                                                 monkeypatch):
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    result = measure(tiny_export, "val", limit=24, seconds=0.05, max_batch_size=8, max_batch_tokens=4096,
                     dtype="float32")
    assert result["inputs"] == 24 and result["batches"] == 3
    lo, median, hi = result["tokens_min_median_max"]
    assert lo < hi  # real inputs as they come, not cut to one length
    assert result["packed"]["padding_share"] == 0.0 < result["padded"]["padding_share"]
    assert result["packed"]["passes"] == result["padded"]["passes"] > 0
