"""`dhrd serve --workers N` as a process tree: the supervisor binds before anything starts, its children
die with it, the drain's grace holds whichever process is signalled, and a dead front end is replaced
(issue 23, items 1-5; RELIABILITY.md maps each to its test here)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from loadtest.servers import free_port

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "export-v1-cb"
PAIR = {"premise": "It rained all day.", "hypothesis": "The streets were wet."}


def serve(tmp_path: Path, port: int, *flags: str, log_name: str = "serve.log") -> tuple[subprocess.Popen, Path]:
    """`dhrd serve --workers ...` on the fixture export, in its own process group, logging to a file."""
    log = tmp_path / log_name
    cmd = [sys.executable, "-m", "dhrd", "serve", "--model", f"cb={FIXTURE}", "--port", str(port), "--dtype", "float32",
           *flags]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, log


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not ready (exit {proc.poll()}): {log.read_text()[-3000:]}")


def pids_of_tree(log: Path) -> dict[str, int]:
    """The children's pids, from the supervisor's log lines."""
    text = log.read_text()
    return {name: int(pid) for name, pid in re.findall(r"(dhrd-(?:engine|front-\d+)) started \(pid (\d+)\)", text)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose (its parent, the test's process, is not the one reaping it)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_group(proc: subprocess.Popen) -> None:
    """Leave nothing behind, whatever the test did: SIGKILL the whole session's group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def test_a_port_that_cannot_be_bound_fails_the_whole_tree_at_once_before_the_engine_starts(tmp_path):
    """Item 1: the port is bound first; a bind error exits non-zero at once, starting no engine."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc, log = serve(tmp_path, port, "--workers", "2")
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            kill_group(proc)
    text = log.read_text()
    assert code == 3, f"exit {code}: {text[-3000:]}"
    assert "address already in use" in text.lower() and "engine" not in text.lower(), text[-3000:]
