"""scripts/compare_runs.py reads prediction files as `dhrd evaluate` writes them (`pred`, `gold`) and as it
wrote them before the rename (the prediction under `label`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_runs.py"
spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_new_and_old_prediction_files_score_alike(tmp_path):
    new = write(tmp_path / "new.jsonl", [{"key": "a", "pred": "yes", "gold": "yes", "probs": [0.1, 0.9]},
                                         {"key": "b", "pred": "yes", "gold": "no", "probs": [0.4, 0.6]}])
    old = write(tmp_path / "old.jsonl", [{"key": "a", "label": "no", "gold": "yes", "probs": [0.9, 0.1]},
                                         {"key": "b", "label": "no", "gold": "no", "probs": [0.6, 0.4]}])
    assert compare_runs.load(new) == {"a": True, "b": False}
    assert compare_runs.load(old) == {"a": False, "b": True}
    result = compare_runs.compare(compare_runs.load(new), compare_runs.load(old), resamples=100)
    assert (result["accuracy_a"], result["accuracy_b"], result["difference"]) == (0.5, 0.5, 0.0)


def test_unlabelled_predictions_are_refused(tmp_path):
    path = write(tmp_path / "test.jsonl", [{"key": "a", "pred": "yes", "gold": None, "probs": [0.1, 0.9]}])
    with pytest.raises(SystemExit, match="without gold labels"):
        compare_runs.load(path)
