"""The packed-vs-padded CPU micro-benchmark runs end to end (one layer, no timing budget)."""
from __future__ import annotations

import json

import pytest

from loadtest.forward.attention import SHAPES, main


@pytest.mark.slow
def test_attention_benchmark_writes_a_row_per_shape(tmp_path):
    out = tmp_path / "attention.json"
    assert main(["--layers", "1", "--seconds", "0", "--dtype", "float32", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["shape"] for r in rows] == [s[0] for s in SHAPES]
    assert all(r["padded_ms"] > 0 and r["packed_repad_ms"] > 0 for r in rows)
    assert all(r["real_tokens"] <= r["padded_tokens"] for r in rows)
