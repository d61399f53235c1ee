"""One command for the performance report: start each scenario's server on loopback, wait for
readiness, run Locust headless over a sweep of concurrency levels, collect its CSV stats, stop
everything, and write `loadtest/results/<date>-<machine>.json` plus a markdown table and PNG plots.

    scripts/benchmark.sh                                                   # full report (~25 min here)
    .venv/bin/python -m loadtest.run --export exports/cb --smoke         # seconds: keeps the runner honest

Scenarios (same machine, same model, one run): DHRD /classify with dynamic batching; the same
service with batching off (the naive floor); the CoT endpoint, batched and unbatched, with the
paper's decoding (≤ 500 new tokens) and a shorter-CoT variant; and the roofline.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class Scenario:
    name: str
    user: str  # Locust user class
    serve_flags: list[str]
    users: list[int]
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""
    peer: bool = False  # served by infinity-emb from --peer-hf instead of `dhrd serve`
    half_load: bool = False  # after the sweep, an open-loop level at half the saturation rate
    slow: bool = False  # CoT: each request takes seconds, so each level runs twice as long
    optional: bool = False  # run only when named in --only


PEER_BATCH = 32  # infinity's --batch-size: 16 and 32 measured alike here (27.6 vs 28.7 req/s, 32 users)
# The tuned knobs of scenario 1 (python -m loadtest.profile: ~1,024 padded tokens per pass is the CPU optimum).
BATCHED_FLAGS = ["--max-batch-size", "32", "--max-batch-tokens", "1024", "--max-wait-ms", "5"]


def scenarios(smoke: bool, cot_tokens: int, short_cot_tokens: int) -> list[Scenario]:
    sweep = [1, 4] if smoke else [1, 4, 16, 32, 64, 128]
    cot_sweep = [1] if smoke else [1, 8]
    # CoT requests run for tens of seconds each: the 30 s default deadline would turn them into 504s.
    cot = ["--cot", "--request-timeout-s", "900"]
    return [
        Scenario("dhrd-batched", "ClassifyUser", [*BATCHED_FLAGS], sweep, note="dynamic batching: " + " ".join(
            BATCHED_FLAGS).replace("--", "").replace("-", "_"), half_load=True),
        # `dhrd serve --compile`: ~2.5 min of compilation at start-up, so not in the default run.
        Scenario("dhrd-compiled", "ClassifyUser", [*BATCHED_FLAGS, "--compile"], sweep[2:] or sweep,
                 note="as dhrd-batched, with --compile", optional=True),
        Scenario("naive-unbatched", "ClassifyUser", ["--max-batch-size", "1", "--max-wait-ms", "0"], sweep,
                 note="same service, batch size 1"),
        Scenario("peer-infinity", "InfinityUser", [], sweep, {"DHRD_PEER_MODEL": "peer"},
                 note=f"infinity-emb 0.0.78, torch engine, bf16, batch size {PEER_BATCH}, HF-layout export", peer=True),
        Scenario("cot-batched", "CotUser", [*cot, "--cot-max-batch-size", "8", "--max-wait-ms", "20"], cot_sweep,
                 {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens)},
                 note=f"CoT decoding, batches of up to 8, T=0.1 top_p=0.7, <= {cot_tokens} new tokens", slow=True),
        # One user: with batch size 1 more users only queue.
        Scenario("cot-unbatched", "CotUser", [*cot, "--cot-max-batch-size", "1"], [1],
                 {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens)}, note=f"CoT, one sequence at a time, <= {cot_tokens}",
                 slow=True),
        Scenario("cot-short-unbatched", "CotUser", [*cot, "--cot-max-batch-size", "1"], [1],
                 {"DHRD_COT_MAX_NEW_TOKENS": str(short_cot_tokens)},
                 note=f"CoT, one at a time, <= {short_cot_tokens} new tokens", slow=True),
        # The paper's CoT length regime: its 3-8B models write long rationales, our 135M one stops early;
        # forcing exactly cot_tokens new tokens (min = max) measures what that length costs here.
        Scenario("cot-forced-batched", "CotUser", [*cot, "--cot-max-batch-size", "8", "--max-wait-ms", "20"],
                 cot_sweep[-1:], {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens), "DHRD_COT_MIN_NEW_TOKENS": str(cot_tokens)},
                 note=f"CoT, batches of up to 8, exactly {cot_tokens} new tokens", slow=True),
        Scenario("cot-forced-unbatched", "CotUser", [*cot, "--cot-max-batch-size", "1"], [1],
                 {"DHRD_COT_MAX_NEW_TOKENS": str(cot_tokens), "DHRD_COT_MIN_NEW_TOKENS": str(cot_tokens)},
                 note=f"CoT, one at a time, exactly {cot_tokens} new tokens", slow=True),
    ]


def fixed_length_inputs(export: Path, tokens: int, path: Path, count: int = 200) -> Path:
    """Real validation inputs, formatted and cut to exactly `tokens` tokens (their end kept), as text."""
    from transformers import AutoTokenizer

    from training.contract import encode_input
    from training.data import load_examples
    from training.tasks import get_task

    manifest = json.loads((export / "manifest.json").read_text())
    task = get_task(manifest["task"])
    tokenizer = AutoTokenizer.from_pretrained(export)
    texts = []
    for e in load_examples(task, "val"):
        ids, _ = encode_input(tokenizer, task.format(e.fields), tokens)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if len(tokenizer(text)["input_ids"]) == tokens:  # decoding can merge tokens; keep exact ones
            texts.append(text)
        if len(texts) >= count:
            break
    path.write_text(json.dumps(texts))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_until_ready(cmd: list[str], probe_url: str, log: Path, timeout: float = 300,
                      poll: float = 0.5) -> subprocess.Popen:
    """Start a server process and wait until `probe_url` answers 200 (or fail, naming its log)."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(cmd[0]).name} exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(probe_url, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    proc.kill()
    raise RuntimeError(f"{Path(cmd[0]).name} not ready in {timeout:g} s; see {log}")


def start_server(export: Path, model: str, port: int, flags: list[str], log: Path) -> subprocess.Popen:
    cmd = [str(BIN / "dhrd"), "serve", "--model", f"{model}={export}", "--port", str(port), *flags,
           "--log-level", "warning"]
    return spawn_until_ready(cmd, f"http://127.0.0.1:{port}/ready", log, timeout=900)  # --compile: minutes


def run_locust(port: int, user: str, users: int, seconds: int, env: dict, out_prefix: Path) -> dict:
    cmd = [str(BIN / "locust"), "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
           "--host", f"http://127.0.0.1:{port}", "--users", str(users), "--spawn-rate", str(users),
           "--run-time", f"{seconds}s", "--csv", str(out_prefix), "--only-summary", "--stop-timeout", "60", user]
    subprocess.run(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=seconds + 180)
    rows = list(csv.DictReader(open(f"{out_prefix}_stats.csv")))
    row = next(r for r in rows if r["Name"] != "Aggregated")
    n = int(row["Request Count"])
    return {"users": users, "requests": n, "failures": int(row["Failure Count"]), "qps": float(row["Requests/s"]),
            "p50_ms": float(row["50%"] or 0), "p95_ms": float(row["95%"] or 0), "p99_ms": float(row["99%"] or 0),
            "mean_ms": float(row["Average Response Time"] or 0)}


SCRAPED = ("dhrd_batch_size_sum", "dhrd_batch_size_count", "dhrd_cot_generated_tokens_total",
           "dhrd_inference_duration_seconds_sum", "dhrd_queue_wait_seconds_sum", "dhrd_queue_wait_seconds_count",
           "dhrd_request_duration_seconds_sum", "dhrd_request_duration_seconds_count")


def scrape(port: int) -> dict[str, float]:
    """The service's own counters (summed over labels), read before and after each level."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    values = dict.fromkeys(SCRAPED, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] += sample.value
    return values


def server_side(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """Where the time went during one level, from the service's metrics: mean batch, the share of wall
    time spent in forward passes, mean queue wait and handler time per request."""
    d = {k: after[k] - before[k] for k in SCRAPED}

    def ratio(num: str, den: str, scale: float = 1.0, digits: int = 2):
        return round(scale * d[num] / d[den], digits) if d[den] else None

    out = {"mean_batch_size": ratio("dhrd_batch_size_sum", "dhrd_batch_size_count"),
           "forward_busy_percent": round(100 * d["dhrd_inference_duration_seconds_sum"] / seconds, 1),
           "queue_wait_ms": ratio("dhrd_queue_wait_seconds_sum", "dhrd_queue_wait_seconds_count", 1000, 1),
           "handler_ms": ratio("dhrd_request_duration_seconds_sum", "dhrd_request_duration_seconds_count", 1000, 1)}
    # Per request the server finished (a request cut off at the window's end still generated its tokens).
    if d["dhrd_cot_generated_tokens_total"] and d["dhrd_request_duration_seconds_count"]:
        out["mean_generated_tokens"] = round(d["dhrd_cot_generated_tokens_total"] / d["dhrd_request_duration_seconds_count"], 1)
    return out


def predict_split(url: str, path: str, model: str, task, examples: list, chunk: int, **extra) -> list[int]:
    """Label indices the service at `url` answers for `examples` (task field objects), `chunk` per request."""
    preds: list[int] = []
    for i in range(0, len(examples), chunk):
        part = examples[i:i + chunk]
        body = {"model": model, "input": [{k: v for k, v in e.fields.items() if v is not None} for e in part],
                "truncate": True, **extra}
        response = httpx.post(f"{url}{path}", json=body, timeout=900)
        response.raise_for_status()
        preds += [task.labels.index(d["label"]) for d in response.json()["data"]]
    return preds


def accuracy(port: int, task_name: str, model: str, path: str, limit: int | None, cot_tokens: int | None) -> dict:
    """Accuracy of one endpoint on the served task's validation split (full-length inputs), sent in
    requests of 8 so batching applies; CoT with the paper's decoding settings."""
    from training.data import load_examples
    from training.tasks import get_task

    task = get_task(task_name)
    examples = load_examples(task, "val")[:limit]
    extra = dict(temperature=0.1, top_p=0.7, max_new_tokens=cot_tokens, seed=0) if cot_tokens else {}
    started = time.perf_counter()
    preds = predict_split(f"http://127.0.0.1:{port}", path, model, task, examples, 8, **extra)
    correct = sum(p == e.label for p, e in zip(preds, examples))
    return {"examples": len(examples), "accuracy": round(correct / len(examples), 4),
            "seconds": round(time.perf_counter() - started, 1)}


def start_peer(hf_dir: Path, port: int, log: Path, batch_size: int = PEER_BATCH) -> subprocess.Popen:
    """infinity-emb (own venv, see loadtest/setup_peer.sh) serving the HF-layout export as 'peer'."""
    binary = REPO / ".venv-infinity" / "bin" / "infinity_emb"
    if not binary.exists():
        raise RuntimeError("the peer is not installed: run loadtest/setup_peer.sh")
    cmd = [str(binary), "v2", "--model-id", str(hf_dir), "--served-model-name", "peer", "--engine", "torch",
           "--device", "cpu", "--dtype", "bfloat16", "--batch-size", str(batch_size), "--port", str(port)]
    return spawn_until_ready(cmd, f"http://127.0.0.1:{port}/health", log)


def measure(export: Path, model: str, scenario: Scenario, seconds: int, workdir: Path,
            peer_hf: Path | None = None, accuracy_limit: int | None = None) -> dict:
    port = free_port()
    log = workdir / f"{scenario.name}.log"
    server = start_peer(peer_hf, port, log) if scenario.peer else start_server(export, model, port,
                                                                               scenario.serve_flags, log)
    result: dict = {**asdict(scenario)}
    try:
        levels = []
        for users in scenario.users:
            before = None if scenario.peer else scrape(port)
            run_seconds = seconds * (2 if scenario.slow else 1)
            level = run_locust(port, scenario.user, users, run_seconds, scenario.env,
                               workdir / f"{scenario.name}-{users}")
            if before is not None:
                level.update(server_side(before, scrape(port), run_seconds))
            levels.append(level)
            print(f"[loadtest] {scenario.name} users={users}: {level['qps']:.2f} req/s, "
                  f"p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms, failures {level['failures']}",
                  flush=True)
        result.update(levels=levels, saturation_qps=max(level["qps"] for level in levels))
        if scenario.half_load:
            result["half_load"] = half_load(port, scenario, result["saturation_qps"], seconds, workdir)
        if scenario.name in ACCURACY_OF:
            path, tokens_env = ACCURACY_OF[scenario.name]
            tokens = int(scenario.env[tokens_env]) if tokens_env else None
            result["accuracy"] = accuracy(port, os.environ.get("DHRD_LOAD_TASK", model), model, path,
                                          accuracy_limit, tokens)
            print(f"[loadtest] {scenario.name} accuracy: {result['accuracy']}", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return result


HALF_LOAD_USERS = 16


def half_load(port: int, scenario: Scenario, saturation: float, seconds: int, workdir: Path) -> dict:
    """Latency at half the saturation rate, offered open-loop-like: HALF_LOAD_USERS users, each paced
    to saturation / 2 / users requests per second (Locust's constant_throughput)."""
    users = HALF_LOAD_USERS
    pace = saturation / 2 / users
    before = scrape(port)
    level = run_locust(port, scenario.user, users, seconds, {**scenario.env, "DHRD_LOAD_PACE": f"{pace:.4f}"},
                       workdir / f"{scenario.name}-half")
    level.update(server_side(before, scrape(port), seconds), target_qps=round(saturation / 2, 2))
    print(f"[loadtest] {scenario.name} at half load ({level['target_qps']} req/s offered): {level['qps']:.2f} req/s, "
          f"p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms", flush=True)
    return level


# Scenarios whose accuracy the report measures (endpoint, and the env var holding max_new_tokens); the
# others serve the same model with the same decoding, so their accuracy is the same.
ACCURACY_OF = {"dhrd-batched": ("/classify", None), "cot-batched": ("/classify/cot", "DHRD_COT_MAX_NEW_TOKENS"),
               "cot-short-unbatched": ("/classify/cot", "DHRD_COT_MAX_NEW_TOKENS")}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()
    return head.strip() + ("-dirty" if dirty else "")


def derive(report: dict, tokens: int) -> dict:
    """Headline numbers: saturation QPS per scenario, ratios of /classify to the others, % of roofline."""
    sat = {s["name"]: s["saturation_qps"] for s in report["scenarios"]}
    out: dict = {"saturation_qps": sat}
    base = sat.get("dhrd-batched")
    if base:
        out["ratio_classify_to"] = {name: round(base / q, 1) for name, q in sat.items()
                                    if name != "dhrd-batched" and q > 0}
    row = next((r for r in report["roofline"]["by_length"] if r["tokens"] == tokens), None)
    if row:
        out["roofline_qps_bf16"] = row["roofline_qps_bfloat16"]
        out["percent_of_bf16_roofline"] = {n: round(100 * q / row["roofline_qps_bfloat16"], 2) for n, q in sat.items()}
    forward = report.get("forward_only")
    if forward and base:
        best = max(r["sequences_per_s"] for r in forward["forward"])
        out["forward_only_best_seq_per_s"] = best
        out["percent_of_forward_only"] = round(100 * base / best, 1)
    batched = next((s for s in report["scenarios"] if s["name"] == "dhrd-batched"), None)
    half = (batched or {}).get("half_load")
    if half:
        out["at_half_saturation"] = {k: half[k] for k in ("users", "target_qps", "qps", "p50_ms", "p99_ms")}
        out["at_half_saturation"]["p99_over_p50"] = round(half["p99_ms"] / half["p50_ms"], 2) if half["p50_ms"] else None
    peer = next((s for s in report["scenarios"] if s["name"] == "peer-infinity"), None)
    if batched and peer:
        theirs = {lv["users"]: lv for lv in peer["levels"]}
        out["vs_peer_by_users"] = [
            {"users": lv["users"], "qps_ratio": round(lv["qps"] / theirs[lv["users"]]["qps"], 2),
             "p99_ms": lv["p99_ms"], "peer_p99_ms": theirs[lv["users"]]["p99_ms"]}
            for lv in batched["levels"] if lv["users"] in theirs and theirs[lv["users"]]["qps"] > 0]
    return out


def markdown(report: dict) -> str:
    lines = ["| scenario | users | req/s | p50 ms | p95 ms | p99 ms | failures | mean batch | forward busy % | "
             "queue wait ms | handler ms | gen. tokens/req |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        half = [{**s["half_load"], "users": f"{s['half_load']['users']} paced to {s['half_load']['target_qps']}/s"}
                ] if s.get("half_load") else []
        for lv in s["levels"] + half:
            lines.append(f"| {s['name']} | {lv['users']} | {lv['qps']:.2f} | {lv['p50_ms']:.0f} | {lv['p95_ms']:.0f} | "
                         f"{lv['p99_ms']:.0f} | {lv['failures']} | {_cell(lv.get('mean_batch_size'))} | "
                         f"{_cell(lv.get('forward_busy_percent'))} | {_cell(lv.get('queue_wait_ms'))} | "
                         f"{_cell(lv.get('handler_ms'))} | {_cell(lv.get('mean_generated_tokens'))} |")
    accuracy = [(s["name"], s["accuracy"]) for s in report["scenarios"] if "accuracy" in s]
    if accuracy:
        lines += ["", "| endpoint (scenario) | validation examples | accuracy | saturation req/s |", "|---|---|---|---|"]
        sat = report.get("summary", {}).get("saturation_qps", {})
        lines += [f"| {name} | {a['examples']} | {a['accuracy']:.3f} | {sat.get(name, 0):.2f} |" for name, a in accuracy]
    lines += ["", "```json", json.dumps(report.get("summary", {}), indent=2), "```"]
    return "\n".join(lines)


def _cell(value) -> str:
    return "" if value is None else str(value)


def plots(report: dict, stem: Path) -> list[Path]:
    """QPS and p50/p99 against concurrency per scenario (log scales: CoT is orders slower), and one
    accuracy-vs-QPS point per endpoint whose accuracy was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_qps, ax_lat, ax_acc) = plt.subplots(1, 3, figsize=(17, 4.8))
    for i, s in enumerate(report["scenarios"]):
        color = f"C{i % 10}"  # one colour per scenario in every panel
        users = [lv["users"] for lv in s["levels"]]
        ax_qps.plot(users, [max(lv["qps"], 1e-3) for lv in s["levels"]], marker="o", color=color, label=s["name"])
        for q, style in (("p50_ms", "-"), ("p99_ms", ":")):
            ax_lat.plot(users, [max(lv[q], 1e-1) for lv in s["levels"]], style, marker=".", color=color)
        if "accuracy" in s:
            ax_acc.scatter(max(s["saturation_qps"], 1e-3), s["accuracy"]["accuracy"], s=50, color=color)
            ax_acc.annotate(s["name"], (max(s["saturation_qps"], 1e-3), s["accuracy"]["accuracy"]), fontsize=8,
                            textcoords="offset points", xytext=(5, 5))
    for ax, title in ((ax_qps, "requests/s"), (ax_lat, "latency (ms): p50 solid, p99 dotted (colours as left)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent users")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.set_xscale("log")
    ax_acc.set_xlabel("saturation requests/s")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.set_title("accuracy vs throughput")
    ax_acc.grid(True, which="both", alpha=0.3)
    ax_qps.legend(fontsize=7)
    fig.tight_layout()
    path = stem.with_suffix(".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


BLOCK_START, BLOCK_END = "<!-- measured:start (loadtest/run.py writes this block) -->", "<!-- measured:end -->"


def update_block(path: Path, report: dict, plot: Path) -> None:
    """Replace the block between the markers (the prose around it is written by people)."""
    text = path.read_text() if path.exists() else f"{BLOCK_START}\n{BLOCK_END}\n"
    if BLOCK_START not in text or BLOCK_END not in text:
        raise SystemExit(f"{path}: no measured block ({BLOCK_START} ... {BLOCK_END}) to update")
    m = report["machine"]
    header = (f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores), commit `{report['commit']}`, "
              f"inputs of {report['tokens']} tokens, export `{report['export']}`.\n"
              f"Command: `{report['command']}`. Raw data: `{os.path.relpath(plot.with_suffix('.json'), path.resolve().parent)}`.\n\n"
              f"![QPS, latency and accuracy against load]({os.path.relpath(plot, path.resolve().parent)})\n\n")
    before, rest = text.split(BLOCK_START, 1)
    after = rest.split(BLOCK_END, 1)[1]
    path.write_text(f"{before}{BLOCK_START}\n{header}{markdown(report)}\n{BLOCK_END}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--model", default="cb", help="served name; the locustfile's task (DHRD_LOAD_TASK) too")
    parser.add_argument("--seconds", type=int, default=30,
                        help="Locust run time per concurrency level (CoT levels: twice this)")
    parser.add_argument("--cot-tokens", type=int, default=500)
    parser.add_argument("--short-cot-tokens", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    parser.add_argument("--peer-hf", type=Path, default=None,
                        help="HF-layout export for the infinity-emb peer (dhrd export --hf-seqcls); "
                             "without it the peer scenario is skipped and the report says so")
    parser.add_argument("--smoke", action="store_true", help="tiny sweep, 3 s per level, 8 CoT tokens")
    parser.add_argument("--tokens", type=int, default=64,
                        help="cut every input to exactly this many tokens (0: the real validation texts, mixed lengths)")
    parser.add_argument("--accuracy-limit", type=int, default=None,
                        help="validation examples for the accuracy points (default: the whole split)")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="also rewrite the measured block of this markdown file (BENCHMARKS.md)")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.cot_tokens, args.short_cot_tokens, args.accuracy_limit = 3, 8, 4, 8
    chosen = [s for s in scenarios(args.smoke, args.cot_tokens, args.short_cot_tokens)
              if (s.name in (args.only or []) or (args.only is None and not s.optional))
              and (args.peer_hf is not None or not s.peer)]
    skipped = [] if args.peer_hf else ["peer-infinity: no --peer-hf export given (needs a --head linear model "
                                       "exported with --hf-seqcls, and loadtest/setup_peer.sh)"]
    os.environ.setdefault("DHRD_LOAD_MODEL", args.model)
    with tempfile.TemporaryDirectory(prefix="dhrd-load-") as tmp:
        if args.tokens:
            os.environ["DHRD_LOAD_INPUTS"] = str(fixed_length_inputs(args.export, args.tokens, Path(tmp) / "in.json"))
        results = [measure(args.export.resolve(), args.model, s, args.seconds, Path(tmp), args.peer_hf,
                           args.accuracy_limit) for s in chosen]
    from .profile import profile
    from .roofline import roofline

    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit(), "machine": machine(),
              "command": shlex.join(["python", "-m", "loadtest.run", *sys.argv[1:]]),
              "export": str(args.export), "scenarios": results, "skipped": skipped,
              "tokens": args.tokens or "validation texts (mixed lengths)",
              "roofline": roofline(args.export, sorted({args.tokens or 64, 64, 128}),
                                   seconds=0.5 if args.smoke else 3.0),
              # forward passes alone, no HTTP and no client: the ceiling the service's overheads come off
              "forward_only": profile(args.export, args.tokens or 64, [1, 8, 16, 32],
                                      seconds=0.3 if args.smoke else 3.0)}
    report["summary"] = derive(report, args.tokens or 64)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d')}-{platform.node() or 'machine'}{'-smoke' if args.smoke else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report) + "\n")
    plots(report, args.out / stem)
    if args.benchmarks:
        update_block(args.benchmarks, report, args.out / f"{stem}.png")
    print(markdown(report))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
