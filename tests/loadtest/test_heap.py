"""`python -m loadtest.forward heap`: the heap setting's A/B runs each side in a fresh process (the setting
is process-wide and one-way), so the default side really runs on glibc's defaults."""
from __future__ import annotations

import json

from loadtest.forward import heap


def test_each_side_runs_in_its_own_process_with_its_own_heap(tmp_path):
    out = tmp_path / "heap.json"
    heap.main(["--tokens", "8", "--seconds", "0.05", "--json", str(out)])
    report = json.loads(out.read_text())
    runs = report["runs"]
    assert runs["default"]["applied"] is False and runs["kept"]["applied"] is True
    assert report["shape"] == [8, 576, 1536] and "machine" in report
    assert all(runs[h]["bf16_ms"] > 0 and runs[h]["int8_ms"] > 0 for h in runs)
    assert set(report["int8_over_bf16_speed"]) == {"default", "kept"}
