"""The serving engine's numbers on one lent CUDA device, as two bounded calls of the device `run` tool
(each sends the checkout, runs one command of at most 10 minutes, and returns what it wrote under $OUT).

    python -m loadtest.gpu --plan                   # the two run(...) calls, exactly as to be made
    python -m loadtest.gpu --call 1                 # SmolLM2-135M shape: ceiling, null server, /classify, CoT
    python -m loadtest.gpu --call 2                 # Llama-3.2-3B shape: ceiling, /classify
    python -m loadtest.gpu --call 1 --device cpu --shape tiny --quick   # the same stages on a CPU (the tests)

Each call is a fixed list of stages. Every stage has its own time budget and the call a total one
(--budget-s), enforced here: a stage whose budget no longer fits in what is left is recorded as
skipped with the reason and never started, every stage's subprocess runs under its budget, and a
watchdog ends the run if anything still overruns. The JSON report is rewritten after every stage
("complete": false until the end), so a run the device's time limit kills still returns what it
measured. The models are random-init exports of real shapes written directly on the device (speed does
not depend on the weights; training would cost device time and measure nothing about serving).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import REPO
from .provenance import report_header
from .servers import free_port, spawn_until_ready, stop

TOKENIZER = REPO / "loadtest" / "assets" / "smollm2"  # SmolLM2's tokenizer (a few MB), used for every shape
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=49152, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0),
}
# `python -m dhrd`, not the console script: on the GPU machine the checkout is not pip-installed.
DHRD = [sys.executable, "-m", "dhrd"]
TARGETS = {"smollm2-135m": {"req_per_s": 5000, "share": 0.45, "batch1_p50_ms": 5.0},
           "llama-3.2-3b": {"req_per_s": 1000, "share": 0.80}}
WORDS = ("the river city people morning quiet market old bridge rain light house garden road school friend "
         "winter music table window story long small green early last open").split()

# --- the two device calls ------------------------------------------------------------------------
# Each call is a fixed list of stages with a budget in seconds each. The device budgets are our
# estimates, not measurements (nothing has run on a GPU yet); they sum to less than the call's total
# (CALL_BUDGET_S), which leaves the rest of RUN_TIMEOUT_S to installing the carried wheels.
CALLS = {
    "1": {"shape": "smollm2-135m", "budgets": {"write": 25, "ceiling": 40, "null": 25, "classify": 80, "cot": 60}},
    "2": {"shape": "llama-3.2-3b", "budgets": {"write": 50, "ceiling": 70, "classify": 115}},
}
# The CPU rehearsal (--quick, tiny shape) on a shared 2-core machine: start-up dominates every stage.
QUICK_BUDGETS = {"write": 40, "ceiling": 40, "null": 25, "classify": 60, "cot": 60}
CALL_BUDGET_S = 240.0  # the kit's own limit per call: stages that would not fit are skipped, never started
RUN_TIMEOUT_S = 300  # the run tool's timeout_s per call: the kit's budget + wheel install + margin
CARRY = [".gpu-wheels"]
WATCHDOG_GRACE_S = 15.0  # past the call's budget by this much, the run is ended with its report saved


def plan() -> list[dict]:
    """The exact `run(...)` calls of the device tool, one per call, with their stages and budgets."""
    return [{"command": f"bash loadtest/gpu_run.sh --call {n}", "carry": CARRY, "timeout_s": RUN_TIMEOUT_S,
             "shape": c["shape"], "budget_s": CALL_BUDGET_S, "stages": c["budgets"]} for n, c in CALLS.items()]


# --- stages --------------------------------------------------------------------------------------
class Stages:
    """Runs named stages, each under its budget; each outcome lands in `report["stages"]`, and
    `save(report)` runs after every stage, so a run killed midway (device time spent) still returns
    what it measured. A stage whose budget does not fit in what is left of the call's is skipped with
    the reason and never started: a stage cut off halfway measures nothing and costs the rest."""

    def __init__(self, report: dict, deadline: float, save=lambda report: None):
        self.report, self.deadline, self.save = report, deadline, save

    def skip(self, name: str, reason: str) -> None:
        self.report["stages"][name] = {"status": "skipped", "reason": reason}
        print(f"[gpu] {name}: skipped ({reason})", flush=True)
        self.save(self.report)

    def run(self, name: str, budget: float, fn, *args):
        """`fn(*args, budget)`, or None when it failed, timed out or did not fit."""
        left = self.deadline - time.monotonic()
        if budget > left:
            self.skip(name, f"its budget of {budget:g} s does not fit in the {max(left, 0):.0f} s left of the call's")
            return None
        self.report["running"] = name  # what a watchdog or a kill interrupted
        self.save(self.report)
        started = time.monotonic()
        try:
            result = fn(*args, budget)
            status = {"status": "ok"}
        except subprocess.TimeoutExpired as exc:
            result, status = None, {"status": "timeout", "error": f"over {exc.timeout:.0f} s"}
        except Exception as exc:  # one stage's failure is recorded; the next stage still runs
            result, status = None, {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        status["seconds"], status["budget_s"] = round(time.monotonic() - started, 1), budget
        self.report["stages"][name] = status
        self.report.pop("running", None)
        print(f"[gpu] {name}: {status}", flush=True)
        self.save(self.report)
        return result

    def measure(self, into: dict, key: str, name: str, budget: float, fn, *args):
        """`run`, with the result stored at `into[key]` and saved before the next stage starts."""
        into[key] = self.run(name, budget, fn, *args)
        self.save(self.report)
        return into[key]


CHILDREN: list[subprocess.Popen] = []  # servers and clients still running, for the watchdog to end


def watchdog(report: dict, save, seconds: float) -> threading.Timer:
    """Ends the run `seconds` from now whatever it is doing (a stage that ignores its budget), with the
    interrupted stage recorded: the report must come back before the device's own limit kills us."""
    def fire() -> None:
        name = report.get("running")
        if name:
            report["stages"][name] = {"status": "timeout", "error": "the call's budget ran out (kit watchdog)"}
        report["watchdog"] = True
        save(report)
        for proc in CHILDREN:
            if proc.poll() is None:
                proc.kill()
        print("[gpu] watchdog: the call's budget ran out; report saved", flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def sh(cmd: list[str], timeout: float, log: Path) -> str:
    """Run a command, its output to `log`; raise with the log's tail on failure (TimeoutExpired on timeout)."""
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} exited {proc.returncode}: {text[-1500:]}")
    return text


def saver(path: Path):
    """Writes the report to `path` atomically (a kill mid-write leaves the previous complete version)."""
    lock = threading.Lock()  # the watchdog's thread may save while the main thread does

    def save(report: dict) -> None:
        with lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".json.tmp")
            partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
            os.replace(partial, path)
    return save


# --- the export, written directly ----------------------------------------------------------------
def write_export(shape: str, out: Path, device: str, with_base: bool) -> dict:
    """A random-init classifier export of the shape, initialised on `device` in bf16 and written as the
    contract defines it (weights, config, tokenizer, manifest with every file's sha256, manifest digest).
    The weights are hashed once, here; the stages that load it in this call skip re-hashing them.
    `with_base`: also save the causal LM (same backbone, tied LM head) that `/classify/cot` loads.

    Why not `dhrd train` + `dhrd export`: a 3B shape would be initialised on the CPU, trained for
    nothing the serving numbers depend on, and hashed again on every load.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from contract import manifest as layout
    from contract.manifest import HeadConfig, Manifest, seal_export
    from contract.model import ClassifierHead
    from contract.tasks import get_task

    task = get_task("cb")
    config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         max_position_embeddings=8192)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    started = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # parameters are born bf16: no fp32 copy of 3.2 B of them
    try:
        with torch.device(device):  # initialised where it will run, not on the CPU
            lm = LlamaForCausalLM(config).eval()
            head = ClassifierHead(HeadConfig(hidden_size=config.hidden_size, num_labels=task.num_labels))
    finally:
        torch.set_default_dtype(default)
    sync()
    init_s = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    # The backbone is the causal LM's body (its tied LM head is the embedding, never exported).
    state = {layout.BACKBONE_PREFIX + k: v for k, v in lm.model.state_dict().items()}
    state.update({layout.HEAD_PREFIX + k: v for k, v in head.state_dict().items()})
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(state, str(out / layout.WEIGHTS_FILE),
              metadata={"format": "pt", "dhrd_format_version": str(layout.EXPORT_FORMAT_VERSION)})
    lm.config.save_pretrained(out)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    base = None
    if with_base:
        base = out.parent / f"{out.name}-base"
        lm.save_pretrained(base)
        for f in TOKENIZER.iterdir():
            shutil.copy(f, base / f.name)
    saved = time.perf_counter()
    manifest = Manifest(
        task=task.name, labels=list(task.labels), label_words=list(task.label_words), pooling="last",
        max_length=512, head=head.config,
        base_model={"name": shape, "path": str(base) if base else None, "sha256": None,
                    "source": "random init (loadtest.gpu)"},
        training={"random_init": True, "note": "not trained: serving speed does not depend on the weights"},
        dtype="bfloat16", created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    seal_export(out, manifest)
    return {"export": str(out), "base": str(base) if base else None,
            "parameters": sum(p.numel() for p in lm.model.parameters()) + sum(p.numel() for p in head.parameters()),
            "weights_bytes": (out / layout.WEIGHTS_FILE).stat().st_size, "init_s": round(init_s, 1),
            "save_s": round(saved - started - init_s, 1), "hash_s": round(time.perf_counter() - saved, 1)}


def write_stage(shape: str, work: Path, device: str, with_base: bool, timeout: float) -> dict:
    """`write_export` in its own process: the device memory of the initialised model is freed with it."""
    text = sh([sys.executable, "-m", "loadtest.gpu", "--write-export", str(work / f"{shape}-export"),
               "--shape", shape, "--device", device, *(["--with-base"] if with_base else [])],
              timeout, work / f"{shape}-write.log")
    return json.loads(text.strip().splitlines()[-1])


# --- forward-only ceiling (its own process: CUDA memory is freed with it) -----------------------------
def forward_ceiling(export: Path, device: str, batches: list[int], tokens: int, seconds: float) -> dict:
    import torch

    from service.device.runner import ModelRunner

    # verify_hashes=False: this call's write stage hashed these files as it wrote them (write_export).
    runner = ModelRunner.from_export(export, dtype="bfloat16", device=device, verify_hashes=False)
    ids = [[(7 * i + j) % 1000 + 10 for j in range(tokens)] for i in range(max(batches))]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def measure() -> dict:
        rows = {}
        for b in batches:
            runner.predict(ids[:b])
            runner.predict(ids[:b])
            sync()
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds or n < 3:
                runner.predict(ids[:b])
                n += 1
            elapsed = time.perf_counter() - started
            rows[str(b)] = {"ms": round(1000 * elapsed / n, 2), "seq_per_s": round(b * n / elapsed, 1)}
        return rows

    out = {"eager": measure()}
    if device.startswith("cuda"):
        started = time.perf_counter()
        captured = runner.use_cuda_graphs(max(batches), max(batches) * tokens)
        out["capture_s"] = round(time.perf_counter() - started, 1)
        if captured:
            out["cuda_graphs"] = measure()
    return out


def ceiling_stage(export: Path, device: str, batches: list[int], tokens: int, seconds: float, work: Path,
                  name: str, timeout: float) -> dict:
    text = sh([sys.executable, "-m", "loadtest.gpu", "--forward-only", str(export), "--device", device,
               "--batches", ",".join(map(str, batches)), "--tokens", str(tokens), "--seconds", str(seconds)],
              timeout, work / f"{name}-forward.log")
    return json.loads(text.strip().splitlines()[-1])


# --- the service ----------------------------------------------------------------------------------
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


# --- report ----------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [f"# GPU serving benchmark, call {report.get('call')}, {report['date']}", "",
             f"Machine: {report['machine']}; device: {report['device_name']}; commit {report['commit']}; "
             f"command: `{report['command']}`; budget {report.get('budget_s')} s", ""]
    for shape, r in report["shapes"].items():
        lines += [f"## {shape}", ""]
        if r.get("write"):
            w = r["write"]
            lines.append(f"- export written: {w['parameters']:,} parameters, {w['weights_bytes']:,} bytes; "
                         f"init {w['init_s']} s, save {w['save_s']} s, hash {w['hash_s']} s")
        fwd = r.get("forward") or {}
        for mode in ("eager", "cuda_graphs"):
            if mode in fwd:
                cells = ", ".join(f"b{b}: {v['seq_per_s']:,.0f} seq/s ({v['ms']} ms)" for b, v in fwd[mode].items())
                lines.append(f"- forward only, {mode}: {cells}")
        ceiling = r.get("ceiling_seq_per_s")
        for key, title in (("null_server", "null server"), ("classify", "`/classify`")):
            c = r.get(key)
            if c:
                flags = f"; flags `{' '.join(c['flags'])}`; mean batch {c['mean_batch']}" if "flags" in c else ""
                lines += ["", f"{title}{flags}:", "",
                          "| connections | req/s | p50 ms | p99 ms | share of ceiling | statuses |", "|---|---|---|---|---|---|"]
                for row in c["rows"]:
                    share = f"{100 * row['req_per_s'] / ceiling:.0f} %" if ceiling and key == "classify" else "-"
                    lines.append(f"| {row['connections']} | {row['req_per_s']:,.0f} | {row['p50_ms']} | {row['p99_ms']} "
                                 f"| {share} | {row['statuses']} |")
        if r.get("batch1"):
            lines += ["", f"- batch-1 latency: {json.dumps(r['batch1'])}"]
        c = r.get("cot")
        if c:
            rd = c["round"]
            lines.append(f"- CoT, {c['engine']}, {c['new_tokens']} new tokens, {rd['requests']} concurrent, cut at "
                         f"{c['seconds_cap']} s: {rd['ok']} ok, {rd['cut_off']} cut off, {rd['req_per_s']} req/s, "
                         f"{rd['generated_tokens_per_s']:,.0f} tokens/s (one round, warm-up included)")
        if r.get("targets"):
            lines.append(f"- targets: {json.dumps(r['targets'])}")
        lines.append("")
    lines += ["## Stages", "", "| stage | status | seconds | budget s | error |", "|---|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {s.get('budget_s', '')} "
                     f"| {(s.get('error') or s.get('reason') or '')[:200]} |")
    return "\n".join(lines) + "\n"


def judge(shape: str, r: dict) -> dict:
    """The issue's targets against what was measured (only where both exist)."""
    target, out = TARGETS.get(shape), {}
    rows = (r.get("classify") or {}).get("rows") or []
    if not target or not rows:
        return out
    best = max(row["req_per_s"] for row in rows)
    out["best_req_per_s"] = best
    out["req_per_s_met"] = best >= target["req_per_s"]
    if r.get("ceiling_seq_per_s"):
        out["share"] = round(best / r["ceiling_seq_per_s"], 3)
        out["share_met"] = out["share"] >= target["share"]
    if "batch1_p50_ms" in target:
        one = next((row for row in rows if row["connections"] == 1), None)
        if one:
            out["batch1_p50_ms"] = one["p50_ms"]
            out["batch1_p50_met"] = one["p50_ms"] <= target["batch1_p50_ms"]
    return out


def batch1(r: dict) -> dict:
    """Batch-1 latency from what the call measured: the forward pass alone and one connection's requests."""
    out = {}
    fwd = r.get("forward") or {}
    for mode in ("eager", "cuda_graphs"):
        if "1" in (fwd.get(mode) or {}):
            out[f"forward_{mode}_ms"] = fwd[mode]["1"]["ms"]
    one = next((row for row in (r.get("classify") or {}).get("rows") or [] if row["connections"] == 1), None)
    if one:
        out.update(classify_p50_ms=one["p50_ms"], classify_p99_ms=one["p99_ms"])
    return out


def plan_lines() -> list[str]:
    """The two `run(...)` calls as written in BENCHMARKS.md, each with a comment line of its stages."""
    lines = []
    for p in plan():
        lines.append(f'run(command="{p["command"]}", carry={json.dumps(p["carry"])}, timeout_s={p["timeout_s"]})')
        lines.append(f"    # {p['shape']}, kit budget {p['budget_s']:g} s: "
                     + ", ".join(f"{k} {v} s" for k, v in p["stages"].items()))
    return lines


def print_plan() -> None:
    print("Device calls (the `run` tool; first, here: bash loadtest/gpu_wheels.sh):")
    print("\n".join(plan_lines()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print the two device calls and exit")
    parser.add_argument("--call", choices=sorted(CALLS), help="which device call's stages to run")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="override the call's shape (tiny: the CPU rehearsal)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny durations and CPU budgets (the rehearsal)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"the call's wall-time budget (default {CALL_BUDGET_S:g}; --quick: 240)")
    parser.add_argument("--stage-budget", action="append", default=[], metavar="STAGE=SECONDS",
                        help="override one stage's budget (repeatable)")
    parser.add_argument("--workers", type=int, default=6, help="front-end processes of dhrd serve")
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--concurrencies", default="1,64,512")
    parser.add_argument("--tokens", type=int, default=64, help="input tokens per sequence")
    parser.add_argument("--cot-tokens", type=int, default=500, help="new tokens per CoT answer (the paper's length)")
    parser.add_argument("--cot-requests", type=int, default=64, help="concurrent requests of the one CoT round")
    parser.add_argument("--cot-seconds", type=float, default=25.0, help="the CoT round is cut off after this")
    parser.add_argument("--cot-cache", choices=("dynamic", "static"), default="dynamic",
                        help="static compiles on first use, which the bounded round may not survive")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "gpu")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (exports, logs)")
    # internal: stages that run in their own process
    parser.add_argument("--forward-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--write-export", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--with-base", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,16,64,256,1024")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    if args.plan:
        print_plan()
        return 0
    if args.write_export:
        print(json.dumps(write_export(args.shape, args.write_export, args.device, args.with_base)))
        return 0
    if args.forward_only:
        result = forward_ceiling(args.forward_only, args.device, [int(b) for b in args.batches.split(",")],
                                 args.tokens, args.seconds or 2.0)
        print(json.dumps(result))
        return 0
    if not args.call:
        parser.error("--call 1 or --call 2 (or --plan)")
    return run(args)


def budgets_of(args) -> dict[str, float]:
    """The call's stages and their budgets, with --stage-budget overrides; raises on an unknown stage."""
    budgets = dict(CALLS[args.call]["budgets"])
    if args.quick:
        budgets = {k: QUICK_BUDGETS[k] for k in budgets}
    for item in args.stage_budget:
        name, _, seconds = item.partition("=")
        if name not in budgets:
            raise SystemExit(f"--stage-budget {item!r}: call {args.call} has no stage {name!r} (it has {', '.join(budgets)})")
        budgets[name] = float(seconds)
    return budgets


def run(args) -> int:
    quick = args.quick
    shape = args.shape or CALLS[args.call]["shape"]
    budgets = budgets_of(args)
    budget_s = args.budget_s if args.budget_s is not None else (240.0 if quick else CALL_BUDGET_S)
    big = shape == "llama-3.2-3b"
    seconds = 1.5 if quick else 5.0
    batches = [1, 8] if quick else [int(b) for b in args.batches.split(",") if not big or int(b) <= 256]
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    work = Path(tempfile.mkdtemp(prefix="dhrd-gpu-"))
    report = {**report_header(), "call": args.call, "device": args.device,
              "device_name": device_name(args.device), "budget_s": budget_s, "plan": budgets,
              "complete": False, "stages": {}, "shapes": {}}
    stem = f"{time.strftime('%Y-%m-%d-%H%M')}-call{args.call}-{args.device.replace(':', '')}"
    save = saver(args.out / f"{stem}.json")  # under $OUT on the device machine: comes back even if killed
    save(report)
    stages = Stages(report, time.monotonic() + budget_s, save)
    timer = watchdog(report, save, budget_s + WATCHDOG_GRACE_S)
    serve_flags = ["--workers", str(args.workers), "--max-batch-size", "8" if quick else "256",
                   "--max-batch-tokens", "2048" if quick else "65536", "--max-wait-ms", "2"]
    r: dict = report["shapes"].setdefault(shape, {})
    made = stages.measure(r, "write", f"{shape}: write", budgets["write"], write_stage, shape, work,
                          args.device, "cot" in budgets)
    export = Path(made["export"]) if made else None
    for stage in [s for s in budgets if s != "write"]:
        name = f"{shape}: {stage}"
        if export is None and stage != "null":
            stages.skip(name, "no export: the write stage did not succeed")
        elif stage == "ceiling":
            stages.measure(r, "forward", name, budgets[stage], ceiling_stage, export, args.device, batches,
                           args.tokens, 1.0 if quick else 1.5, work, shape)
            if r["forward"]:
                r["ceiling_seq_per_s"] = max(v["seq_per_s"] for mode in ("eager", "cuda_graphs")
                                             for v in (r["forward"].get(mode) or {}).values())
        elif stage == "null":
            stages.measure(r, "null_server", name, budgets[stage], null_stage, concurrencies,
                           args.client_processes, seconds, args.tokens, work)
        elif stage == "classify":
            stages.measure(r, "classify", name, budgets[stage], classify_stage, export, args.device, serve_flags,
                           concurrencies, args.client_processes, seconds, args.tokens, work, shape)
        elif stage == "cot":
            stages.measure(r, "cot", name, budgets[stage], cot_stage, export, args.device, args.cot_cache,
                           4 if quick else args.cot_requests, 8 if quick else args.cot_tokens,
                           20.0 if quick else args.cot_seconds, work, f"{shape}-cot")
    r["batch1"] = batch1(r)
    r["targets"] = judge(shape, r)
    timer.cancel()
    report["complete"] = True
    save(report)
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    if args.keep:
        print(f"[gpu] work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    failed = [n for n, s in report["stages"].items() if s["status"] != "ok"]
    return 1 if failed else 0


def device_name(device: str) -> str:
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    except Exception:  # the report says so rather than failing
        pass
    return "cpu" if device == "cpu" else f"{device} (unavailable)"


if __name__ == "__main__":
    raise SystemExit(main())
