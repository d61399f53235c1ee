"""The service on the device: `dhrd serve` started on the kit's export, the null server beside it, both
driven by raw keep-alive client processes (/classify), and one bounded round of CoT requests."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from .. import REPO
from ..servers import free_port, spawn_until_ready, stop
from .stages import CHILDREN

# `python -m dhrd`, not the console script: on the GPU machine the checkout is not pip-installed.
DHRD = [sys.executable, "-m", "dhrd"]

WORDS = ("the river city people morning quiet market old bridge rain light house garden road school friend "
         "winter music table window story long small green early last open").split()

# The kit's export was hashed when this call wrote it; `dhrd serve` would hash its 6.4 GB (3B shape)
# again before opening the port. --no-verify-hashes is the service's own switch for that, and it logs
# loudly that it is on; it skips the manifest digest too (written by the same function seconds before),
# while the manifest's parsing, consistency and file-location checks still run.
KIT_EXPORT_FLAGS = ["--no-verify-hashes"]


def start(export: Path, device: str, flags: list[str], log: Path, timeout: float):
    port = free_port()
    cmd = [*DHRD, "serve", "--model", f"cb={export}", "--port", str(port), "--device", device,
           *KIT_EXPORT_FLAGS, *flags, "--log-level", "warning"]
    proc = spawn_until_ready(cmd, f"http://127.0.0.1:{port}/ready", log, timeout, poll=0.3)
    CHILDREN.append(proc)
    return proc, port


def drive(port: int, body: str, connections: int, processes: int, seconds: float, work: Path,
          deadline: float) -> dict:
    """`connections` keep-alive connections spread over `processes` raw-client processes; merged result.
    Raises TimeoutExpired past `deadline` (time.monotonic()), the stage's end."""
    processes = max(1, min(processes, connections))
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    files = [work / f"lat-{port}-{connections}-{i}.json" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "loadtest.rawclient", "--port", str(port), "--body", body,
                               "--connections", str(n), "--seconds", str(seconds), "--latencies-out", str(f)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for n, f in zip(share, files)]
    CHILDREN.extend(procs)
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                raise RuntimeError(f"rawclient failed: {err[-1000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    latencies = sorted(x for f in files for x in json.loads(f.read_text()))
    pick = (lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)) if latencies \
        else (lambda q: None)
    statuses: dict[str, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {"connections": connections, "req_per_s": round(sum(r["req_per_s"] for r in results), 1),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "statuses": statuses}


def batch_mean(port: int) -> float | None:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(("dhrd_batch_size_sum{model=\"cb\"}", "dhrd_batch_size_count{model=\"cb\"}"))}
    count = values.get("dhrd_batch_size_count")
    return round(values["dhrd_batch_size_sum"] / count, 1) if count else None


def classify_body(tokens: int) -> str:
    words = max(1, int(tokens * 0.7) - 8)  # ~`tokens` tokens with the CB template around them
    return json.dumps({"model": "cb", "input": {"premise": " ".join(WORDS[i % len(WORDS)] for i in range(words)),
                                                "hypothesis": "The river was quiet."}})


ROW_SLACK_S = 6.0  # per row beyond its seconds: client start-up, its 1 s warm-up, the merge


def rows_time(concurrencies: list[int], seconds: float) -> float:
    return len(concurrencies) * (seconds + ROW_SLACK_S)


def classify_stage(export: Path, device: str, flags: list[str], concurrencies: list[int], processes: int,
                   seconds: float, tokens: int, work: Path, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    # Start-up (load, CUDA graph capture) gets what the rows leave of the stage's budget.
    proc, port = start(export, device, flags, work / f"{name}-serve.log",
                       max(5.0, timeout - rows_time(concurrencies, seconds)))
    try:
        rows = [drive(port, classify_body(tokens), c, processes, seconds, work, deadline) for c in concurrencies]
        return {"flags": [*KIT_EXPORT_FLAGS, *flags], "rows": rows, "mean_batch": batch_mean(port)}
    finally:
        stop(proc, timeout=10)


def null_stage(concurrencies: list[int], processes: int, seconds: float, tokens: int, work: Path,
               timeout: float) -> dict:
    """The same clients against a server that answers without any work (loadtest/null_server.py), on
    this machine: the most any HTTP server on these cores can do, which /classify is a share of."""
    deadline = time.monotonic() + timeout
    port = free_port()
    proc = spawn_until_ready([sys.executable, "-m", "loadtest.null_server", str(port)], f"http://127.0.0.1:{port}/",
                             work / "null-server.log", max(5.0, timeout - rows_time(concurrencies, seconds)), poll=0.2)
    CHILDREN.append(proc)
    try:
        return {"rows": [drive(port, classify_body(tokens), c, processes, seconds, work, deadline)
                         for c in concurrencies]}
    finally:
        stop(proc, timeout=10)


async def _cot_round(port: int, requests: int, new_tokens: int, seconds: float) -> dict:
    """`requests` concurrent CoT requests of `new_tokens` each, cut at `seconds`: what finished by then
    is what is reported (a round that would wait an hour for a slow decoder costs the whole call)."""
    import httpx

    body = {"model": "cb", "input": {"premise": "The river was quiet in the early morning light.",
                                     "hypothesis": "The river was loud."},
            "temperature": 0.0, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    async with httpx.AsyncClient(timeout=seconds + 5, limits=httpx.Limits(max_connections=requests)) as http:
        started = time.perf_counter()
        tasks = [asyncio.create_task(http.post(f"http://127.0.0.1:{port}/classify/cot", json=body))
                 for _ in range(requests)]
        done, pending = await asyncio.wait(tasks, timeout=seconds)
        elapsed = time.perf_counter() - started
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    answers = [t.result() for t in done if t.exception() is None]
    ok = [a for a in answers if a.status_code == 200]
    generated = sum(d["generated_tokens"] for a in ok for d in a.json()["data"])
    return {"requests": requests, "ok": len(ok), "cut_off": len(pending), "errors": len(done) - len(answers),
            "seconds": round(elapsed, 2), "req_per_s": round(len(ok) / elapsed, 2),
            "generated_tokens_per_s": round(generated / elapsed, 1),
            "statuses": sorted({a.status_code for a in answers})}


def cot_stage(export: Path, device: str, cache: str, requests: int, new_tokens: int, seconds: float, work: Path,
              name: str, timeout: float) -> dict:
    flags = ["--cot", "--cot-cache", cache, "--cot-max-batch-size", str(requests), "--max-wait-ms", "50",
             "--cot-max-new-tokens", str(max(new_tokens, 1)), "--cot-request-timeout-s", str(seconds)]
    # One round, which includes the decoder's first-call warm-up: a second round would double the cost.
    proc, port = start(export, device, flags, work / f"{name}-serve.log", max(5.0, timeout - seconds - 5))
    try:
        first = asyncio.run(_cot_round(port, requests, new_tokens, seconds))
        engine = (f"transformers generate(), static KV cache{', auto torch.compile + CUDA graphs' if 'cuda' in device else ''}"
                  if cache == "static" else "transformers generate(), dynamic KV cache, eager")
        return {"cache": cache, "engine": engine, "new_tokens": new_tokens, "seconds_cap": seconds,
                "round": first}
    finally:
        stop(proc, timeout=10)
