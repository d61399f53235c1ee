"""The front-end proxy benchmark runs end to end: a null server and `dhrd serve` with the tiny fixture
model, each driven by the raw keep-alive client, one JSON report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_frontend_proxy_measures_both_servers_in_one_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.frontend", "--seconds", "1", "--connections", "8",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    for side in ("null_server", "dhrd"):
        assert report[side]["req_per_s"] > 0 and set(report[side]["statuses"]) == {"200"}, report[side]
    assert 0 < report["dhrd_share_of_null_percent"] < 100
    assert report["machine"]["cpu"] and report["commit"]
