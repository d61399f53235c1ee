"""The packed-vs-padded benchmark on a task's own inputs: rounds taken and cut by the batcher's own
function in each mode, both modes on the same inputs, and a padding share that packing removes."""
from __future__ import annotations

from loadtest.forward.packing import batches_by_mode, measure


def test_each_round_is_cut_as_the_batcher_cuts_it_in_each_mode():
    # one round of 4 (max_batch_size), sorted by length, then a budget of 100 tokens: real tokens packed
    # (40+50 fit, 60 and 70 alone), count x longest padded (2 x 50 = 100 fits, 2 x 60 would not).
    assert batches_by_mode([60, 50, 40, 70], max_batch_size=4, max_batch_tokens=100) == [
        {"packed": [[2, 1], [0], [3]], "padded": [[2, 1], [0], [3]]}]
    # rounds are consecutive inputs: the fifth starts a round of its own, whatever its length
    plan = batches_by_mode([30, 10, 20, 25, 5], max_batch_size=4, max_batch_tokens=60)
    assert plan == [{"packed": [[1, 2, 3], [0]], "padded": [[1, 2], [3, 0]]}, {"packed": [[4]], "padded": [[4]]}]
    assert batches_by_mode([500], max_batch_size=8, max_batch_tokens=100) == [{"packed": [[0]], "padded": [[0]]}]


def test_packed_and_padded_run_the_same_inputs_and_only_padded_computes_padding(tiny_export, data_dir, monkeypatch):
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    result = measure(tiny_export, "val", limit=24, seconds=0.05, max_batch_size=8, max_batch_tokens=4096,
                     dtype="float32")
    assert result["inputs"] == 24 and result["rounds"] == 3
    lo, median, hi = result["tokens_min_median_max"]
    assert lo < hi  # real inputs as they come, not cut to one length
    assert result["packed"]["padding_share"] == 0.0 < result["padded"]["padding_share"]
    assert result["packed"]["sequences"] == result["padded"]["sequences"] > 0  # the same rounds, mode after mode
