"""scripts/demo.sh, past training (a finished run and an export are given): once the service is ready it
prints the exact curl to try and where /docs and /metrics are, the curl works as printed, and Ctrl-C/SIGTERM
stops the service through its drain."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from loadtest.servers import free_port

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "export-v1-cb"


@pytest.mark.slow
def test_demo_prints_the_curl_to_try_once_the_service_is_ready(tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed (scripts/setup.sh installs it where it may)")
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")  # a finished run: demo.sh neither trains nor needs the backbone
    port = free_port()
    env = {**os.environ, "DHRD_DEMO_RUN": str(run), "DHRD_DEMO_EXPORT": str(FIXTURE), "DHRD_PORT": str(port)}
    proc = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not any("Ctrl-C stops it" in line for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.2)
        text = "".join(lines)
        assert "Ctrl-C stops it" in text, text[-3000:]
        # announced only once the service answers /ready
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl "))
        curl = "".join(lines[start:start + 2])
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        data = json.loads(answer.stdout)["data"][0]
        assert data["label"] in ("entailment", "contradiction", "neutral") and len(data["probs"]) == 3
        assert f"http://127.0.0.1:{port}/docs" in text and f"http://127.0.0.1:{port}/metrics" in text
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
        assert "dhrd_queue_depth" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        proc.send_signal(signal.SIGTERM)  # what Ctrl-C's trap does too: passed on to the service
        assert proc.wait(timeout=90) == 0, "".join(lines)[-3000:]
    finally:
        if proc.poll() is None:  # the script and the service it started (its own process group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
