"""A front end whose event loop stops, under `dhrd serve --workers 2`: how many new connections time out,
with one listening socket per front end (the default) and with one shared socket. Not in CI.

One front end is SIGSTOPped for `--stop-s` seconds while a client sends /classify on a new connection per
request (3 s timeout) and a probe asks /ready on a new connection every second; counted from the stop
until the stopped process is resumed (it is killed and replaced first, where the supervisor notices).

    .venv/bin/python -m loadtest.reliability stuck-front-end --export tests/fixtures/export-v1-cb   # loadtest/results/stuck-front-end/
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .. import REPO
from ..provenance import report_header
from ..servers import BIN, free_port, spawn_until_ready

PAIR = {"premise": "It rained all day.", "hypothesis": "The streets were wet."}


def front_end_pid(log: Path, name: str = "dhrd-front-0") -> int:
    return int(re.findall(rf"{name} started \(pid (\d+)\)", log.read_text())[-1])


def hammer(url: str, path: str, until: float, pause: float, timeout: float, out: list[str]) -> None:
    """Requests on a new connection each, until `until`: 'ok', 'timeout' or the status/error."""
    while time.monotonic() < until:
        try:
            if path == "/ready":
                answer = httpx.get(url + path, timeout=timeout)
            else:
                answer = httpx.post(url + path, json={"model": "cb", "input": PAIR}, timeout=timeout)
            out.append("ok" if answer.status_code == 200 else str(answer.status_code))
        except httpx.TimeoutException:
            out.append("timeout")
        except httpx.HTTPError as exc:
            out.append(type(exc).__name__)
        time.sleep(pause)


def one_layout(export: Path, flags: list[str], stop_s: float, timeout: float) -> dict:
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="dhrd-stuck-")) / "serve.log"
    cmd = [str(BIN / "dhrd"), "serve", "--model", f"cb={export}", "--port", str(port), "--workers", "2", *flags]
    proc = spawn_until_ready(cmd, f"http://127.0.0.1:{port}/ready", log)  # at info level: the log names the pids
    url = f"http://127.0.0.1:{port}"
    try:
        time.sleep(2)
        stuck = front_end_pid(log)
        os.kill(stuck, signal.SIGSTOP)
        until = time.monotonic() + stop_s
        work: list[str] = []
        probes: list[str] = []
        threads = [threading.Thread(target=hammer, args=(url, "/classify", until, 0.0, timeout, work)),
                   threading.Thread(target=hammer, args=(url, "/ready", until, 1.0, timeout, probes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            os.kill(stuck, signal.SIGCONT)
        except ProcessLookupError:
            pass  # killed and replaced by the supervisor
        replaced = "has not run its event loop" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except Exception:
            proc.kill()
    count = lambda xs: {k: xs.count(k) for k in sorted(set(xs))}  # noqa: E731
    return {"flags": flags, "requests": count(work), "ready_probes": count(probes), "replaced": replaced}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--stop-s", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=3.0, help="client timeout per request")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "stuck-front-end")
    args = parser.parse_args(argv)
    layouts = {"socket per front end (default)": [], "one shared socket": ["--no-socket-per-front-end"]}
    results = {name: one_layout(args.export, flags, args.stop_s, args.timeout) for name, flags in layouts.items()}
    report = {**report_header(f"python -m loadtest.reliability stuck-front-end --export {args.export} "
                              f"--stop-s {args.stop_s} --timeout {args.timeout}"), "layouts": results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d-%H%M')}-{report['machine']['node']}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
