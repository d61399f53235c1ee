"""One command for the serving engine's numbers on a machine with a CUDA device (and no network):
random-init backbones of real shapes (weights do not change speed), a few `dhrd train` steps, `dhrd
export`, the forward-only ceiling per batch size (eager and CUDA graphs), then `dhrd serve` driven by
raw keep-alive clients in several processes: `/classify` at several concurrencies and `/classify/cot`
with plain `generate()` and with the static-cache compiled decoder, at the paper's 500 new tokens.

    python -m loadtest.gpu                                  # H200: both shapes, < 7 minutes
    python -m loadtest.gpu --device cpu --shapes tiny --quick   # the same pipeline on a CPU (the test)

Every stage runs under its own timeout and records ok / failed / timeout / skipped with its log's tail,
so one failure does not cost the rest. Writes JSON + markdown under --out (gpu_run.sh: $OUT); the JSON
is rewritten after every stage ("complete": false until the end), so a killed run still returns what
it measured.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import REPO
from .provenance import commit, machine
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
LORA = {"llama-3.2-3b"}  # trained with LoRA, as the paper trains its larger models
TARGETS = {"smollm2-135m": {"req_per_s": 5000, "share": 0.45, "batch1_p50_ms": 5.0},
           "llama-3.2-3b": {"req_per_s": 1000, "share": 0.80}}
WORDS = ("the river city people morning quiet market old bridge rain light house garden road school friend "
         "winter music table window story long small green early last open").split()


# --- stages --------------------------------------------------------------------------------------
class Stages:
    """Runs named stages under timeouts; each outcome lands in `report["stages"]`, and `save(report)`
    runs after every stage, so a run killed midway (device time spent) still returns what it measured."""

    def __init__(self, report: dict, deadline: float, save=lambda report: None):
        self.report, self.deadline, self.save = report, deadline, save

    def run(self, name: str, timeout: float, fn, *args):
        left = self.deadline - time.monotonic()
        if left < 5:
            self.report["stages"][name] = {"status": "skipped", "reason": "overall budget spent"}
            print(f"[gpu] {name}: skipped (budget)", flush=True)
            self.save(self.report)
            return None
        started = time.monotonic()
        try:
            result = fn(*args, min(timeout, left))
            status = {"status": "ok"}
        except subprocess.TimeoutExpired as exc:
            result, status = None, {"status": "timeout", "error": f"over {exc.timeout:.0f} s"}
        except Exception as exc:  # one stage's failure is recorded; the next stage still runs
            result, status = None, {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[-2000:]}"}
        status["seconds"] = round(time.monotonic() - started, 1)
        self.report["stages"][name] = status
        print(f"[gpu] {name}: {status}", flush=True)
        self.save(self.report)
        return result

    def measure(self, into: dict, key: str, name: str, timeout: float, fn, *args):
        """`run`, with the result stored at `into[key]` and saved before the next stage starts."""
        into[key] = self.run(name, timeout, fn, *args)
        self.save(self.report)
        return into[key]


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
    def save(report: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(partial, path)
    return save


# --- building inputs -----------------------------------------------------------------------------
def build_backbone(shape: str, out: Path, device: str, timeout: float) -> Path:
    """A random-init causal LM of the shape, saved as a local HF directory with SmolLM2's tokenizer."""
    code = ("import sys, torch; from transformers import LlamaConfig, LlamaForCausalLM\n"
            "cfg = LlamaConfig(**__import__('json').loads(sys.argv[1]), bos_token_id=1, eos_token_id=2, "
            "pad_token_id=2, max_position_embeddings=8192)\n"
            "torch.manual_seed(0)\n"
            "with torch.device(sys.argv[3]):\n"
            "    model = LlamaForCausalLM(cfg).to(torch.bfloat16)\n"
            "model.save_pretrained(sys.argv[2])\n")
    out.mkdir(parents=True, exist_ok=True)
    sh([sys.executable, "-c", code, json.dumps(SHAPES[shape]), str(out), device], timeout, out.parent / f"{shape}-build.log")
    for f in TOKENIZER.iterdir():
        shutil.copy(f, out / f.name)
    return out


def write_data(root: Path, n_train: int = 64, n_val: int = 32, words: int = 40) -> Path:
    """A synthetic CB-format data directory and rationales (speed does not depend on the text)."""
    rng = random.Random(0)
    labels = ("entailment", "contradiction", "neutral")
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."  # noqa: E731
    cb = root / "superglue" / "CB"
    cb.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = [{"premise": text(words), "hypothesis": text(8), "label": labels[i % 3], "idx": i} for i in range(n)]
        (cb / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rationales = root / "cb.train.jsonl"
    rationales.write_text("".join(json.dumps({"key": f"cb/{i}", "task": "cb", "split": "train",
                                              "label": labels[i % 3], "rationale": text(60)}) + "\n"
                                  for i in range(n_train)))
    return root


def train_and_export(shape: str, backbone: Path, data: Path, work: Path, steps: int, timeout: float) -> dict:
    run, export = work / f"{shape}-run", work / f"{shape}-export"
    started = time.monotonic()
    sh([*DHRD, "train", "--task", "cb", "--out", str(run), "--backbone", str(backbone),
        "--data-dir", str(data), "--rationales", str(data / "cb.train.jsonl"), "--max-steps", str(steps),
        "--batch-size", "8", "--eval-limit", "16", "--epochs", "1", "--max-length", "128",
        "--no-progress", *(["--lora"] if shape in LORA else [])], timeout, work / f"{shape}-train.log")
    trained = time.monotonic() - started
    sh([*DHRD, "export", str(run), "--out", str(export)], max(timeout - trained, 10),
       work / f"{shape}-export.log")
    return {"export": str(export), "train_s": round(trained, 1), "export_s": round(time.monotonic() - started - trained, 1)}


# --- forward-only ceiling (its own process: CUDA memory is freed with it) -----------------------------
def forward_ceiling(export: Path, device: str, batches: list[int], tokens: int, seconds: float) -> dict:
    import torch

    from service.runner import ModelRunner

    runner = ModelRunner.from_export(export, dtype="bfloat16", device=device)
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
def start(export: Path, device: str, flags: list[str], log: Path, timeout: float):
    port = free_port()
    cmd = [*DHRD, "serve", "--model", f"cb={export}", "--port", str(port), "--device", device, *flags,
           "--log-level", "warning"]
    return spawn_until_ready(cmd, f"http://127.0.0.1:{port}/ready", log, timeout, poll=0.3), port


def drive(port: int, body: str, connections: int, processes: int, seconds: float, work: Path) -> dict:
    """`connections` keep-alive connections spread over `processes` raw-client processes; merged result."""
    processes = max(1, min(processes, connections))
    share = [connections // processes + (i < connections % processes) for i in range(processes)]
    files = [work / f"lat-{port}-{connections}-{i}.json" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "loadtest.rawclient", "--port", str(port), "--body", body,
                               "--connections", str(n), "--seconds", str(seconds), "--latencies-out", str(f)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for n, f in zip(share, files)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise RuntimeError(f"rawclient failed: {err[-1000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
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


def classify_stage(export: Path, device: str, flags: list[str], concurrencies: list[int], processes: int,
                   seconds: float, tokens: int, work: Path, name: str, timeout: float) -> dict:
    words = max(1, int(tokens * 0.7) - 8)  # ~`tokens` tokens with the CB template around them
    body = json.dumps({"model": "cb", "input": {"premise": " ".join(WORDS[i % len(WORDS)] for i in range(words)),
                                                "hypothesis": "The river was quiet."}})
    proc, port = start(export, device, flags, work / f"{name}-serve.log", timeout)
    try:
        rows = [drive(port, body, c, processes, seconds, work) for c in concurrencies]
        return {"flags": flags, "rows": rows, "mean_batch": batch_mean(port)}
    finally:
        stop(proc)


async def _cot_round(port: int, concurrency: int, new_tokens: int) -> dict:
    import httpx

    body = {"model": "cb", "input": {"premise": "The river was quiet in the early morning light.",
                                     "hypothesis": "The river was loud."},
            "temperature": 0.0, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    async with httpx.AsyncClient(timeout=3600, limits=httpx.Limits(max_connections=concurrency)) as http:
        started = time.perf_counter()
        answers = await asyncio.gather(*(http.post(f"http://127.0.0.1:{port}/classify/cot", json=body)
                                         for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = [a for a in answers if a.status_code == 200]
    generated = sum(d["generated_tokens"] for a in ok for d in a.json()["data"])
    return {"requests": concurrency, "ok": len(ok), "seconds": round(elapsed, 2),
            "req_per_s": round(len(ok) / elapsed, 2), "generated_tokens_per_s": round(generated / elapsed, 1),
            "statuses": sorted({a.status_code for a in answers})}


def cot_stage(export: Path, device: str, cache: str, concurrency: int, new_tokens: int, work: Path, name: str,
              timeout: float) -> dict:
    flags = ["--cot", "--cot-cache", cache, "--cot-max-batch-size", str(concurrency), "--max-wait-ms", "50",
             "--cot-max-new-tokens", str(max(new_tokens, 1))]
    proc, port = start(export, device, flags, work / f"{name}-serve.log", timeout)
    try:  # round 1 includes compilation (static cache); round 2 is what a warm service does
        first = asyncio.run(_cot_round(port, concurrency, new_tokens))
        warm = asyncio.run(_cot_round(port, concurrency, new_tokens))
        engine = (f"transformers generate(), static KV cache{', auto torch.compile + CUDA graphs' if 'cuda' in device else ''}"
                  if cache == "static" else "transformers generate(), dynamic KV cache, eager")
        return {"cache": cache, "engine": engine, "new_tokens": new_tokens, "first_round": first, "warm": warm}
    finally:
        stop(proc)


# --- report ----------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [f"# GPU serving benchmark, {report['date']}", "",
             f"Machine: {report['machine']}; device: {report['device_name']}; commit {report['commit']}; "
             f"command: `{report['command']}`", ""]
    for shape, r in report["shapes"].items():
        lines += [f"## {shape}", ""]
        fwd = r.get("forward") or {}
        for mode in ("eager", "cuda_graphs"):
            if mode in fwd:
                cells = ", ".join(f"b{b}: {v['seq_per_s']:,.0f} seq/s ({v['ms']} ms)" for b, v in fwd[mode].items())
                lines.append(f"- forward only, {mode}: {cells}")
        ceiling = r.get("ceiling_seq_per_s")
        for key in ("classify", "classify_eager"):
            c = r.get(key)
            if c:
                lines += ["", f"`/classify` ({key}; flags `{' '.join(c['flags'])}`; mean batch {c['mean_batch']}):", "",
                          "| connections | req/s | p50 ms | p99 ms | share of ceiling | statuses |", "|---|---|---|---|---|---|"]
                for row in c["rows"]:
                    share = f"{100 * row['req_per_s'] / ceiling:.0f} %" if ceiling else "-"
                    lines.append(f"| {row['connections']} | {row['req_per_s']:,.0f} | {row['p50_ms']} | {row['p99_ms']} "
                                 f"| {share} | {row['statuses']} |")
        for key in ("cot_dynamic", "cot_static"):
            c = r.get(key)
            if c:
                lines.append(f"- CoT, {c['engine']}, {c['new_tokens']} new tokens, {c['warm']['requests']} concurrent: "
                             f"{c['warm']['req_per_s']} req/s, {c['warm']['generated_tokens_per_s']:,.0f} tokens/s "
                             f"(first round {c['first_round']['seconds']} s)")
        if r.get("targets"):
            lines.append(f"- targets: {json.dumps(r['targets'])}")
        lines.append("")
    lines += ["## Stages", "", "| stage | status | seconds | error |", "|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {(s.get('error') or s.get('reason') or '')[:200]} |")
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="smollm2-135m,llama-3.2-3b", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--quick", action="store_true", help="tiny durations (the CPU test of the pipeline)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="overall wall-time budget; later stages skip")
    parser.add_argument("--workers", type=int, default=6, help="front-end processes of dhrd serve")
    parser.add_argument("--client-processes", type=int, default=8)
    parser.add_argument("--concurrencies", default="1,64,512")
    parser.add_argument("--tokens", type=int, default=64, help="input tokens per sequence")
    parser.add_argument("--cot-tokens", type=int, default=500, help="new tokens per CoT answer (the paper's length)")
    parser.add_argument("--cot-concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "gpu")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (backbones, exports, logs)")
    # internal: the forward-only stage runs in its own process
    parser.add_argument("--forward-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,16,64,256,1024")
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    if args.forward_only:
        result = forward_ceiling(args.forward_only, args.device, [int(b) for b in args.batches.split(",")],
                                 args.tokens, args.seconds or 2.0)
        print(json.dumps(result))
        return 0
    return run(args)


def run(args) -> int:
    quick = args.quick
    seconds = 1.5 if quick else 6.0
    batches = [1, 8] if quick else [int(b) for b in args.batches.split(",")]
    concurrencies = [int(c) for c in args.concurrencies.split(",")]
    cot_tokens = 8 if quick else args.cot_tokens
    cot_concurrency = 4 if quick else args.cot_concurrency
    work = Path(tempfile.mkdtemp(prefix="dhrd-gpu-"))
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "commit": commit(),
              "command": "python -m loadtest.gpu " + " ".join(sys.argv[1:]), "device": args.device,
              "device_name": device_name(args.device), "complete": False, "stages": {}, "shapes": {}}
    stem = f"{time.strftime('%Y-%m-%d-%H%M')}-{args.device.replace(':', '')}"
    save = saver(args.out / f"{stem}.json")  # under $OUT on the device machine: comes back even if killed
    save(report)
    stages = Stages(report, time.monotonic() + args.budget_s, save)
    data = write_data(work / "data")
    serve_flags = ["--workers", str(args.workers), "--max-batch-size", "8" if quick else "256",
                   "--max-batch-tokens", "2048" if quick else "65536", "--max-wait-ms", "2"]
    for shape in args.shapes.split(","):
        r: dict = report["shapes"].setdefault(shape, {})
        big = shape == "llama-3.2-3b"
        backbone = stages.run(f"{shape}: build", 180, build_backbone, shape, work / shape, args.device)
        if backbone is None:
            continue
        made = stages.run(f"{shape}: train+export", 240 if big else 120, train_and_export, shape, backbone, data,
                          work, 3)
        if made is None:
            continue
        r.update(train_s=made["train_s"], export_s=made["export_s"])
        export = Path(made["export"])
        stages.measure(r, "forward", f"{shape}: forward ceiling", 150, ceiling_stage, export, args.device,
                       [b for b in batches if not big or b <= 512], args.tokens, 1.0 if quick else 2.0, work, shape)
        if r["forward"]:
            r["ceiling_seq_per_s"] = max(v["seq_per_s"] for mode in ("eager", "cuda_graphs")
                                         for v in (r["forward"].get(mode) or {}).values())
        stages.measure(r, "classify", f"{shape}: /classify", 240, classify_stage, export, args.device, serve_flags,
                       concurrencies, args.client_processes, seconds, args.tokens, work, shape)
        stages.measure(r, "cot_static", f"{shape}: /classify/cot static", 240, cot_stage, export, args.device,
                       "static", cot_concurrency, cot_tokens, work, f"{shape}-cot-static")
        stages.measure(r, "cot_dynamic", f"{shape}: /classify/cot dynamic", 180, cot_stage, export, args.device,
                       "dynamic", cot_concurrency, cot_tokens, work, f"{shape}-cot-dynamic")
        r["targets"] = judge(shape, r)
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
