"""Soak test: sustained overload of `dhrd serve` with deadlines, disconnects and bad inputs mixed in;
status counts, p99 and the server's RSS every interval; then SIGTERM under load. Not in CI.

    .venv/bin/python -m loadtest.reliability soak --export exports/cb --minutes 5        # writes loadtest/results/soak/
    .venv/bin/python -m loadtest.reliability soak --export exports/cb --minutes 15 --interval 60 --workers 2 \
        --stall engine@300 --stall front-0@600 --stall-s 20      # stalls: SIGSTOP, then SIGCONT

A stall stops one process of the tree (`engine` or `front-N` under --workers, `server` in one process)
for --stall-s seconds at the given second of the soak; the report's rows show what it cost and that the
replica served again (a stopped front end is replaced by the supervisor after --front-end-timeout-s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import threading
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .. import REPO
from ..provenance import report_header
from ..servers import free_port, start_server

# What each simulated client sends, by weight: most requests are ordinary; the rest are the faults
# an operator sees (clients that give up, bodies that are not JSON, text that is not Unicode,
# requests too large to ever queue).
MIX = {"ok": 70, "batch": 10, "disconnect": 8, "bad_json": 4, "surrogate": 4, "too_many": 4}
PREMISES = ["It rained all day.", "The cat is asleep on the sofa.", "Tom bought a new car last week.",
            "The museum was closed on Monday because of the storm, so the visitors went to the park instead."]


@dataclass
class Window:
    """Outcomes of one reporting interval."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def row(self, t: float, rss_mb: float) -> dict:
        lat = sorted(self.latencies)
        p = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else None)
        return {"t_s": round(t), "rss_mb": rss_mb, "requests": sum(self.statuses.values()),
                "statuses": dict(sorted(self.statuses.items())), "p50_ms": p(0.5), "p99_ms": p(0.99)}


def tree_pids(log: Path, server_pid: int) -> dict[str, int]:
    """The serving processes by name: `server` (the one process, or the supervisor), and under --workers
    the supervisor's children from its log (`dhrd-engine`, `dhrd-front-N`; the last pid logged wins)."""
    found = {"server": server_pid}
    for name, pid in re.findall(r"dhrd-(engine|front-\d+) started \(pid (\d+)\)", log.read_text()):
        found[name] = int(pid)
    return found


def stall_later(log: Path, server_pid: int, name: str, at_s: float, seconds: float, events: list[dict],
                start: float) -> threading.Timer:
    """At `at_s` into the soak, SIGSTOP process `name` for `seconds`, then SIGCONT it (if it still exists:
    the supervisor may have replaced it); the events are recorded for the report."""
    def stall() -> None:
        pid = tree_pids(log, server_pid)[name]
        os.kill(pid, signal.SIGSTOP)
        events.append({"t_s": round(time.monotonic() - start), "event": f"SIGSTOP {name} (pid {pid})"})
        time.sleep(seconds)
        try:
            os.kill(pid, signal.SIGCONT)
            events.append({"t_s": round(time.monotonic() - start), "event": f"SIGCONT {name} (pid {pid})"})
        except ProcessLookupError:
            events.append({"t_s": round(time.monotonic() - start), "event": f"{name} (pid {pid}) was replaced"})

    timer = threading.Timer(at_s, stall)
    timer.daemon = True
    timer.start()
    return timer


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` and every process below it (the engine and front ends under --workers)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:  # gone meanwhile (a replaced front end)
            pass
    return round(total / 1024, 1)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux: /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def body(kind: str, rng: random.Random, too_many: int) -> tuple[bytes, float]:
    """(request body, client timeout) for one request of `kind`."""
    item = {"premise": rng.choice(PREMISES), "hypothesis": "Something happened."}
    if kind == "bad_json":
        return b'{"model": "cb", "input": [', 30.0
    if kind == "surrogate":
        return b'{"model": "cb", "input": {"premise": "a\\ud800b", "hypothesis": "c"}}', 30.0
    inputs = {"ok": [item], "batch": [item] * 8, "disconnect": [item] * 4, "too_many": [item] * too_many}[kind]
    timeout = rng.uniform(0.05, 0.5) if kind == "disconnect" else 30.0  # the client gives up and hangs up
    return json.dumps({"model": "cb", "input": inputs}).encode(), timeout


async def client(url: str, seed: int, until: float, window: list[Window], too_many: int) -> None:
    rng = random.Random(seed)
    kinds = list(MIX)
    weights = list(MIX.values())
    async with httpx.AsyncClient(timeout=30) as http:
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            payload, timeout = body(kind, rng, too_many)
            started = time.monotonic()
            try:
                r = await http.post(url, content=payload, headers={"content-type": "application/json"},
                                    timeout=timeout)
                outcome = f"{r.status_code}" + ("" if r.headers.get("content-type", "").startswith(
                    "application/json") else ":not-json")
            except httpx.TimeoutException:
                outcome = "client-gave-up" if kind == "disconnect" else "timeout"
            except httpx.HTTPError as exc:
                outcome = f"transport:{type(exc).__name__}"
            window[0].statuses[f"{kind}:{outcome}"] += 1
            if outcome == "200":
                window[0].latencies.append(time.monotonic() - started)
            elif outcome == "429":  # a well-behaved client waits as told (capped: the overload must go on)
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), 5.0))


async def soak(url: str, pid: int, seconds: float, clients: int, interval: float, too_many: int,
               start: float | None = None) -> list[dict]:
    window = [Window()]
    until = time.monotonic() + seconds
    start = time.monotonic() if start is None else start
    tasks = [asyncio.create_task(client(url, i, until, window, too_many)) for i in range(clients)]
    rows = [Window().row(0, rss_mb(pid))]
    while time.monotonic() < until:
        await asyncio.sleep(min(interval, max(0.0, until - time.monotonic())))
        rows.append(window[0].row(time.monotonic() - start, rss_mb(pid)))
        print(f"[soak] {json.dumps(rows[-1])}", flush=True)
        window[0] = Window()
    await asyncio.gather(*tasks)
    return rows


async def sigterm_under_load(url: str, proc, clients: int) -> dict:
    """One request of 16 inputs per client in flight, then SIGTERM: what completed, what got a 503, and
    anything else (which would be a defect). Requests are not re-sent: a load balancer stops sending
    once /ready fails, and a request raced onto a closing keep-alive connection is the client's to retry."""
    payload = json.dumps({"model": "cb", "input": [{"premise": p, "hypothesis": "Something happened."}
                                                   for p in PREMISES] * 4}).encode()

    async def one(http: httpx.AsyncClient) -> str:
        try:
            r = await http.post(url, content=payload, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            return f"transport:{type(exc).__name__}"
        is_json = r.headers.get("content-type", "").startswith("application/json")
        return f"{r.status_code}" + (f":{r.json()['error']['type']}" if r.status_code != 200 and is_json else "")

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        tasks = [asyncio.create_task(one(http)) for _ in range(clients)]
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        return dict(Counter(await asyncio.gather(*tasks)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (overload on 2 cores)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between report rows")
    parser.add_argument("--request-timeout-s", type=float, default=2.0, help="server deadline: 504s under overload")
    parser.add_argument("--flags", default="", help="extra `dhrd serve` flags, e.g. '--max-queue 256'")
    parser.add_argument("--workers", type=int, default=None, help="`dhrd serve --workers N`")
    parser.add_argument("--stall", action="append", default=[], metavar="NAME@SECOND",
                        help="SIGSTOP process NAME (engine, front-N, server) at SECOND of the soak, for --stall-s")
    parser.add_argument("--stall-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "soak")
    args = parser.parse_args(argv)

    port = free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp(prefix="dhrd-soak-")) / "serve.log"  # the server's log stays out of the repo
    flags = ["--request-timeout-s", str(args.request_timeout_s), "--max-queue", "256", "--max-inputs-per-request",
             "128", *(["--workers", str(args.workers), "--log-level", "info", "--no-access-log"] if args.workers else []),
             *args.flags.split()]
    proc = start_server(args.export, "cb", port, flags, log)
    url = f"http://127.0.0.1:{port}/classify"
    events: list[dict] = []
    start = time.monotonic()
    for spec in args.stall:
        name, at = spec.rsplit("@", 1)
        stall_later(log, proc.pid, name, float(at), args.stall_s, events, start)
    try:
        rows = asyncio.run(soak(url, proc.pid, args.minutes * 60, args.clients, args.interval, too_many=257,
                                start=start))
        alive = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code
        shutdown = asyncio.run(sigterm_under_load(url, proc, 16))
        exit_code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    typed = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")
    report = {**report_header("python -m loadtest.reliability soak " + typed),
              "serve_flags": flags, "mix": MIX, "rows": rows, "stalls": events, "ready_after_soak": alive,
              "sigterm": shutdown, "exit_code": exit_code}
    stem = f"{time.strftime('%Y-%m-%d-%H%M')}-{report['machine']['node']}"  # a later run never overwrites an earlier one
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"Soak on {report['machine']['cpu']} ({report['machine']['cores']} cores), {report['date']}, "
             f"commit {report['commit']}: `{report['command']}`", "",
             "| t (s) | RSS (MB) | requests | 200 p50 / p99 (ms) | outcomes (kind:status) |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in r["statuses"].items())
        lines.append(f"| {r['t_s']} | {r['rss_mb']} | {r['requests']} | {r['p50_ms']} / {r['p99_ms']} | {outcomes} |")
    if report.get("stalls"):
        lines += ["", "Stalls: " + "; ".join(f"{e['t_s']} s: {e['event']}" for e in report["stalls"]) + "."]
    lines += ["", f"`/ready` after the soak: {report['ready_after_soak']}. SIGTERM with 16 clients in flight: "
              f"{report['sigterm']}; exit code {report['exit_code']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
