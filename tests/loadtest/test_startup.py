"""The start-up timer: consecutive starts of `dhrd serve` on one fresh cache, each until /ready."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "export-v1-cb"


def test_startup_times_each_start_until_ready(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.reliability", "startup", "--export", str(FIXTURE), "--flags", "",
                           "--starts", "2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(report["ready_seconds"]) == 2 and all(0 < s < 300 for s in report["ready_seconds"])
