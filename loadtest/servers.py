"""Start, probe and stop the servers under test (`dhrd serve` and the infinity-emb peer) on loopback."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from . import REPO

BIN = Path(sys.executable).parent
PEER_BATCH = 32  # infinity's --batch-size: 16 and 32 measured alike here (27.6 vs 28.7 req/s, 32 users)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ok(url: str, timeout: float, poll: float = 0.5, alive=lambda: True) -> bool:
    """Poll `url` until it answers 200 (True), `timeout` passes or `alive()` turns false (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    return False


def spawn_until_ready(cmd: list[str], probe_url: str, log: Path, timeout: float = 300,
                      poll: float = 0.5) -> subprocess.Popen:
    """Start a server process and wait until `probe_url` answers 200 (or fail, naming its log)."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    if wait_until_ok(probe_url, timeout, poll, alive=lambda: proc.poll() is None):
        return proc
    tail = log.read_text()[-1500:]  # in the error too: a benchmark's work directory may be gone later
    if proc.poll() is not None:
        raise RuntimeError(f"{Path(cmd[0]).name} exited ({proc.returncode}); see {log}: {tail}")
    proc.kill()
    raise RuntimeError(f"{Path(cmd[0]).name} not ready in {timeout:g} s; see {log}: {tail}")


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM (the server drains), then SIGKILL if it has not exited within `timeout`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(export: Path, model: str, port: int, flags: list[str], log: Path) -> subprocess.Popen:
    quiet = [] if "--log-level" in flags else ["--log-level", "warning"]  # a caller may need the info lines
    cmd = [str(BIN / "dhrd"), "serve", "--model", f"{model}={export}", "--port", str(port), *flags, *quiet]
    return spawn_until_ready(cmd, f"http://127.0.0.1:{port}/ready", log, timeout=900)  # --compile: minutes


def start_peer(hf_dir: Path, port: int, log: Path, batch_size: int = PEER_BATCH, dtype: str = "auto") -> subprocess.Popen:
    """infinity-emb (own venv, see loadtest/setup_peer.sh) serving the HF-layout export as 'peer', in the
    dtype `dhrd serve --dtype auto` picks here: bf16 on a CPU without native bf16 would make the peer ~100x
    slower for a reason that has nothing to do with its serving stack."""
    from contract.model import resolve_dtype

    dtype = resolve_dtype(dtype, "cpu")
    binary = REPO / ".venv-infinity" / "bin" / "infinity_emb"
    if not binary.exists():
        raise RuntimeError("the peer is not installed: run loadtest/setup_peer.sh")
    cmd = [str(binary), "v2", "--model-id", str(hf_dir), "--served-model-name", "peer", "--engine", "torch",
           "--device", "cpu", "--dtype", dtype, "--batch-size", str(batch_size), "--port", str(port)]
    return spawn_until_ready(cmd, f"http://127.0.0.1:{port}/health", log)
