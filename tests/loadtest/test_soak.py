"""The soak script, briefly, on the fixture export: it reports, and nothing it sends earns a 5xx."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "export-v1-cb"


@pytest.mark.slow
def test_a_short_soak_reports_rows_and_sees_no_server_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadtest.reliability", "soak", "--export", str(FIXTURE), "--minutes", "0.1",
                           "--interval", "2", "--clients", "8", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert len(report["rows"]) >= 3 and all(r["rss_mb"] > 0 for r in report["rows"])
    outcomes = {k for r in report["rows"] for k in r["statuses"]}
    assert any(k.startswith("ok:200") for k in outcomes)
    assert {"bad_json:422", "surrogate:422", "too_many:413"} <= outcomes
    assert not [k for k in outcomes if k.split(":")[1].startswith("5") or "not-json" in k], outcomes
    assert report["ready_after_soak"] == 200
    # 429: on a busy machine the honest queue may refuse work it could not finish by the 2 s deadline.
    assert set(report["sigterm"]) <= {"200", "503:shutting_down", "429:overloaded"}, report["sigterm"]
    assert (tmp_path / next(tmp_path.glob("*.json")).with_suffix(".md").name).exists()


def test_a_stall_stops_the_named_process_of_the_tree_for_its_seconds_then_resumes_it(tmp_path):
    import time

    from loadtest.reliability.soak import stall_later, tree_pids

    sleeper = subprocess.Popen(["sleep", "30"])
    log = tmp_path / "serve.log"
    log.write_text(f"x dhrd-engine started (pid 1)\nx dhrd-front-0 started (pid {sleeper.pid})\n")
    try:
        assert tree_pids(log, 7) == {"server": 7, "engine": 1, "front-0": sleeper.pid}
        events: list = []
        start = time.monotonic()
        stall_later(log, 7, "front-0", 0.0, 0.5, events, start)
        time.sleep(0.25)
        state = Path(f"/proc/{sleeper.pid}/stat").read_text().split(")")[-1].split()[0]
        assert state == "T"  # stopped
        time.sleep(0.6)
        assert [e["event"].split()[0] for e in events] == ["SIGSTOP", "SIGCONT"]
        assert Path(f"/proc/{sleeper.pid}/stat").read_text().split(")")[-1].split()[0] == "S"
    finally:
        sleeper.kill()


def test_the_rss_column_counts_the_whole_process_tree():
    import os

    from loadtest.reliability.soak import descendants, rss_mb

    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytes([1]) * (64 << 20); time.sleep(30)"])
    try:
        import time

        time.sleep(1.5)  # the child has allocated its 64 MB
        assert child.pid in descendants(os.getpid())
        alone = float(Path(f"/proc/{os.getpid()}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
        assert rss_mb(os.getpid()) > alone + 60
    finally:
        child.kill()
