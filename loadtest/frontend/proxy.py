"""The CPU-measurable proxy for the serving front end: `/classify` req/s at saturation with a tiny
random model (its forward pass costs almost nothing), next to what a null server (same uvicorn,
fixed JSON answer) serves to the same raw keep-alive client, in one run.

    .venv/bin/python -m loadtest.frontend proxy                  # writes loadtest/results/frontend/
    .venv/bin/python -m loadtest.frontend proxy --peer           # + infinity-emb on the same tiny model
    .venv/bin/python -m loadtest.frontend proxy --stub-forward   # + dhrd with its forward pass stubbed out

On a CPU without native bf16 the "tiny" model's forward pass is not free (fp32, ~0.5 ms a sequence at 76
tokens on the 2-core VM): `--stub-forward` also runs `dhrd serve` with fixed probabilities in place of
the forward pass (loadtest/frontend/stub_serve.py), the front end alone against the null server.

With `--peer` the tiny model is a fresh random one with a linear head (what infinity-emb can serve, in
the HF *ForSequenceClassification layout), and dhrd serves the same classifier from its export.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contract.model import resolve_dtype

from .. import REPO
from ..provenance import report_header
from ..servers import BIN, free_port, spawn_until_ready, start_peer, stop

TINY_EXPORT = REPO / "tests" / "fixtures" / "export-v1-cb"  # 2 layers, 64 wide: the forward pass is ~free
BODY = json.dumps({"model": "cb", "input": {"premise": "It rained all day and the streets were wet.",
                                            "hypothesis": "The ground got wet."}})


def drive(port: int, connections: int, seconds: float) -> dict:
    return drive_body(port, BODY, connections, seconds)


def drive_body(port: int, body: str, connections: int, seconds: float) -> dict:
    """The raw client in its own process (its own GIL), against one server."""
    out = subprocess.run([sys.executable, "-m", "loadtest.rawclient", "--port", str(port), "--body", body,
                          "--connections", str(connections), "--seconds", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 120, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"rawclient failed: {out.stderr[-1000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tiny_backbone(out: Path) -> Path:
    """A random causal LM of the fixture's shape (2 layers, 64 wide) with the fixture's tokenizer."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

    fixture = AutoConfig.from_pretrained(TINY_EXPORT)
    torch.manual_seed(0)
    config = LlamaConfig(**{k: getattr(fixture, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                             "num_hidden_layers", "num_attention_heads",
                                                             "num_key_value_heads")},
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_EXPORT / name, out / name)
    return out


def tiny_linear_export(work: Path) -> tuple[Path, Path]:
    """A tiny random classifier with a linear head, exported twice: dhrd's layout and HF's (for the peer).
    Trained two steps on CB's own train split (the weights do not change the speed)."""
    backbone = tiny_backbone(work / "backbone")
    run, export, hf = work / "run", work / "export", work / "export-hf"
    dhrd = [sys.executable, "-m", "dhrd"]
    for cmd, log in ((["train", "--task", "cb", "--out", str(run), "--backbone", str(backbone), "--alpha", "0",
                       "--head", "linear", "--max-steps", "2", "--eval-limit", "8", "--precision", "fp32",
                       "--no-progress"], "train.log"),
                     (["export", str(run), "--out", str(export), "--hf-seqcls", str(hf)], "export.log")):
        with (work / log).open("w") as out:
            subprocess.run([*dhrd, *cmd], stdout=out, stderr=subprocess.STDOUT, timeout=600, check=True, cwd=REPO)
    return export, hf


def gc_pauses(port: int) -> dict[str, float]:
    """dhrd's collector counters (collections and pause seconds per generation, summed over its processes),
    as flushed so far; {} from a server without them. Read before and after a run: the difference is the run's."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    found = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:  # not Prometheus text (the null server answers every path with its JSON)
        return {}
    kinds = {"dhrd_gc_collections_total": "collections", "dhrd_gc_pause_seconds_total": "pause_s"}
    for family in families:
        for s in family.samples:
            if s.name in kinds:
                key = f"gen{s.labels['generation']}_{kinds[s.name]}"
                found[key] = found.get(key, 0) + s.value  # summed over processes' series
    return found


def measure(name: str, cmd: list[str], probe: str, port: int, connections: int, seconds: float, log: Path) -> dict:
    proc = spawn_until_ready(cmd, f"http://127.0.0.1:{port}{probe}", log, timeout=300, poll=0.2)
    try:
        before = gc_pauses(port)
        result = drive(port, connections, seconds)
        time.sleep(1.5)  # every process flushes its collector counts each second
        after = gc_pauses(port)
        if after:  # dhrd serve: the collector's work during the run (service/gc_heap.py)
            result["gc"] = {k: round(after[k] - before.get(k, 0.0), 4) for k in after}
    finally:
        stop(proc)
    print(f"[frontend] {name}: {json.dumps(result)}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=TINY_EXPORT)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--flags", default="--max-batch-size 64 --max-batch-tokens 8192 --max-wait-ms 2",
                        help="dhrd serve flags (batching for a model whose forward pass is nearly free)")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=EXTRA_FLAGS",
                        help="also measure dhrd serve with these extra flags (repeatable), e.g. "
                             "'workers-2=--workers 2'")
    parser.add_argument("--peer", action="store_true", help="also infinity-emb (loadtest/setup_peer.sh) on the same "
                                                               "tiny model; implies a fresh tiny linear-head export")
    parser.add_argument("--log-level", default="warning", help="dhrd serve's log level (info: uvicorn's access log "
                                                                  "writes a line per request unless --no-access-log)")
    parser.add_argument("--stub-forward", action="store_true", help="also each variant with its forward pass "
                                                                       "replaced by fixed probabilities")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "frontend")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="dhrd-frontend-"))
    hf = None
    if args.peer:
        args.export, hf = tiny_linear_export(logs / "tiny")
    port = free_port()
    null = measure("null-server", [sys.executable, "-m", "loadtest.null_server", str(port)], "/", port,
                   args.connections, args.seconds, logs / "null.log")
    variants = {"one-process": ""}
    variants.update(v.split("=", 1) for v in (args.variant or []))
    results = {}
    runs = [(name, extra, False) for name, extra in variants.items()]
    if args.stub_forward:  # each variant again, its forward pass stubbed (in the engine process too)
        runs += [(f"{name}-stub-forward", extra, True) for name, extra in variants.items()]
    for name, extra, stubbed in runs:
        port = free_port()
        serve = [sys.executable, "-m", "loadtest.frontend.stub_serve"] if stubbed else [str(BIN / "dhrd")]
        results[name] = measure(f"dhrd-tiny {name}", [*serve, "serve", "--model", f"cb={args.export}", "--port",
                                                       str(port), *args.flags.split(), *extra.split(),
                                                       "--log-level", args.log_level], "/ready", port,
                                args.connections, args.seconds, logs / f"dhrd-{name}.log")
        if stubbed:
            variants[name] = f"{extra} (forward pass stubbed: loadtest/frontend/stub_serve.py)".strip()
    dhrd = results["one-process"]
    peer = None
    if hf is not None:
        from contract.export_reader import read_manifest
        from contract.tasks import get_task

        fields = json.loads(BODY)["input"]
        text = get_task(read_manifest(args.export).task).format(fields)
        port = free_port()
        proc = start_peer(hf, port, logs / "peer.log", batch_size=64)
        try:
            peer = drive_body(port, json.dumps({"model": "peer", "input": [text]}), args.connections, args.seconds)
        finally:
            stop(proc)
        print(f"[frontend] infinity-emb: {json.dumps(peer)}", flush=True)
    report = {**report_header(), "connections": args.connections,
              "seconds": args.seconds, "serve_flags": args.flags, "log_level": args.log_level,
              "export": str(args.export.resolve().relative_to(REPO)) if args.export.resolve().is_relative_to(REPO)
              else "a fresh tiny export (--peer)" if args.peer else str(args.export),
              "null_server": null, "dhrd": dhrd, "variants": {k: {"extra_flags": variants[k], **v}
                                                              for k, v in results.items()},
              "dhrd_share_of_null_percent": round(100 * dhrd["req_per_s"] / max(null["req_per_s"], 1e-9), 1),
              "share_of_null_percent": {k: round(100 * v["req_per_s"] / max(null["req_per_s"], 1e-9), 1)
                                        for k, v in results.items()},
              "infinity_emb": peer, "dtype_here": resolve_dtype("auto", "cpu"),
              "ratio_to_infinity": peer and {k: round(v["req_per_s"] / max(peer["req_per_s"], 1e-9), 2)
                                             for k, v in results.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y-%m-%d-%H%M')}-{report['machine']['node']}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("null_server", "variants", "share_of_null_percent", "infinity_emb",
                                             "ratio_to_infinity")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
