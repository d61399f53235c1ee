"""Engine CPU per request: what the engine process spends (user + system CPU, as getrusage counts it,
read from /proc since the engine is not this process's child) over a fixed number of requests to
`dhrd serve --workers N` with a tiny model, so the forward pass is small and the engine's own
overhead (IPC frames, pickling, batching) shows. Needs a quiet machine for numbers worth keeping.

    python -m loadtest.frontend engine-cpu --requests 2000 --connections 16
    python -m loadtest.frontend engine-cpu --workers 2 --flags "" --hog 1     # torch's default threads, a busy neighbour
    python -m loadtest.frontend engine-cpu --workers 2 --stub-forward         # the engine's own work: IPC, batching
    python -m loadtest.frontend engine-cpu --workers 2 --stub-forward --raw-seconds 15   # ... at the raw client's rates
prints one JSON line, with the front ends' CPU per request beside the engine's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from .. import REPO
from ..provenance import commit, report_header
from ..servers import free_port, stop, wait_until_ok

FIXTURE = REPO / "tests" / "fixtures" / "export-v1-cb"
BODY = {"model": "cb", "input": {"premise": "It rained all day.", "hypothesis": "The streets were wet."}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` so far (fields 14 and 15 of /proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def engine_pid(log: Path, timeout: float = 120) -> int:
    """The supervisor logs the engine's pid once it started it."""
    end = time.time() + timeout
    while time.time() < end:
        found = re.search(r"one engine \(pid (\d+)\)", log.read_text())
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"no engine pid in {log}: {log.read_text()[-1500:]}")


async def send(url: str, requests: int, connections: int) -> dict[int, int]:
    """Exactly `requests` POSTs, over `connections` concurrent clients; returns status counts."""
    left, statuses = iter(range(requests)), {}

    async def client(http: httpx.AsyncClient) -> None:
        for _ in left:
            status = (await http.post(url, json=BODY)).status_code
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(connections)))
    return statuses


def raw_load(port: int, connections: int, seconds: float) -> tuple[dict[str, int], int]:
    """The raw keep-alive client (loadtest/rawclient.py, its own process) for `seconds`, no warm-up of its
    own: rates the httpx client cannot reach. Returns its status counts and how many requests it sent."""
    out = subprocess.run([sys.executable, "-m", "loadtest.rawclient", "--port", str(port), "--body", json.dumps(BODY),
                          "--connections", str(connections), "--seconds", str(seconds), "--warmup", "0"],
                         capture_output=True, text=True, timeout=seconds + 120, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"rawclient failed: {out.stderr[-1000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["statuses"], result["requests"]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (the supervisor's: the engine and the front ends)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def hogs(n: int) -> list[subprocess.Popen]:
    """`n` processes that only burn CPU: the contention of a busy node (a neighbour, a second job)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(export: Path, workers: int, requests: int, connections: int, warmup: int, flags: list[str],
            hog: int = 0, stub_forward: bool = False, raw_seconds: float = 0.0) -> dict:
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="engine-cpu-")) / "serve.log"
    cmd = [sys.executable, "-m", "loadtest.frontend.stub_serve" if stub_forward else "dhrd", "serve", "--model", f"cb={export}", "--port", str(port), "--workers",
           str(workers), "--dtype", "float32", "--log-level", "info", *flags]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        pid = engine_pid(log)
        if not wait_until_ok(f"http://127.0.0.1:{port}/ready", 300, alive=lambda: proc.poll() is None):
            raise RuntimeError(f"not ready; see {log}")
        url = f"http://127.0.0.1:{port}/classify"
        asyncio.run(send(url, warmup, connections))
        front = [c for c in children(proc.pid) if c != pid]
        burners = hogs(hog)
        try:
            cpu0, front0, wall0 = cpu_seconds(pid), [cpu_seconds(f) for f in front], time.perf_counter()
            if raw_seconds:
                statuses, requests = raw_load(port, connections, raw_seconds)
            else:
                statuses = asyncio.run(send(url, requests, connections))
            cpu, wall = cpu_seconds(pid) - cpu0, time.perf_counter() - wall0
            front_cpu = [cpu_seconds(f) - c for f, c in zip(front, front0)]
        finally:
            for b in burners:
                b.kill()
    finally:
        stop(proc)
    return {"engine_cpu_us_per_request": round(cpu / requests * 1e6, 1), "engine_cpu_s": round(cpu, 3),
            "front_end_cpu_us_per_request": round(sum(front_cpu) / requests * 1e6, 1),
            "front_end_cpu_s": [round(c, 3) for c in front_cpu], "req_per_s": round(requests / wall, 1),
            "requests": requests, "connections": connections, "workers": workers, "wall_s": round(wall, 2),
            "hog_processes": hog, "flags": flags, "stub_forward": stub_forward,
            "client": f"raw, {raw_seconds:g} s" if raw_seconds else "httpx", "statuses": statuses,
            "commit": commit()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=FIXTURE, help="a tiny export (default: the test fixture)")
    parser.add_argument("--workers", type=int, default=1, help="front-end processes (>= 1: an engine process)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=100, help="requests sent before measuring")
    # One torch thread: a second OpenMP thread spins between passes and its CPU would swamp the engine's
    # own per-request work, which is what this measures.
    parser.add_argument("--flags", default="--threads 1", help="more `dhrd serve` flags (default: %(default)s)")
    parser.add_argument("--hog", type=int, default=0, help="CPU-burning processes run beside it while measuring "
                                                           "(contention; default: none)")
    parser.add_argument("--stub-forward", action="store_true", help="fixed probabilities in place of the forward "
                                                                   "pass (loadtest/frontend/stub_serve.py): the engine's own "
                                                                   "work per request, IPC and batching")
    parser.add_argument("--raw-seconds", type=float, default=0.0, help="drive it with the raw keep-alive client for "
                                                                       "this many seconds instead of --requests over "
                                                                       "httpx (which cannot load it past ~300 req/s)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1: with 0 there is no engine process to measure")
    header = report_header(None if argv is None else ["python", "-m", "loadtest.frontend", "engine-cpu", *argv])
    print(json.dumps({**header, **measure(args.export, args.workers, args.requests, args.connections, args.warmup,
                                          args.flags.split(), args.hog, args.stub_forward, args.raw_seconds)}))


if __name__ == "__main__":
    main()
