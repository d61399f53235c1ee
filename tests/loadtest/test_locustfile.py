"""The locustfile reads a task's validation split the way training does (the contract's reader), for
every kind of task; the load tool imports neither `training/` nor torch (issue 23, item 15)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import loadtest.bench.locustfile as lf
heavy = sorted(m for m in ("training", "torch", "transformers") if m in sys.modules)
print(json.dumps({"inputs": lf.INPUTS, "heavy": heavy}))
"""


# FLAN tasks split one train file by a hash of the input (`file#val`): the case the copy got wrong.
@pytest.mark.parametrize("task", ["creak", "ecqa", "qasc", "cb"])
def test_the_locustfile_sends_the_tasks_validation_inputs_without_importing_training(task, data_dir):
    from contract.data import holdout_part, load_examples
    from contract.tasks import get_task

    env = {**os.environ, "DHRD_LOAD_MODEL": task, "DHRD_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO)}
    env.pop("DHRD_LOAD_INPUTS", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["heavy"] == []
    expected = [{k: v for k, v in e.fields.items() if v is not None}
                for e in load_examples(get_task(task), "val", data_dir, limit=2000)]
    assert probe["inputs"] == expected and expected
    if task != "cb":
        assert all(holdout_part(x["input"]) == "val" for x in probe["inputs"])
