#!/usr/bin/env python3
"""Start `dhrd serve` on an export, time it to readiness, classify the task's validation split
through POST /classify, and report accuracy (and the official metrics) against the labels.

    .venv/bin/python scripts/check_service.py --export exports/cb --model cb
Writes reports/service-<model>.json (machine, date, commit, command, numbers).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from contract.data import load_examples
from contract.metrics import compute_metrics
from contract.tasks import get_task
from loadtest.bench.accuracy import predict_split
from loadtest.provenance import report_header
from loadtest.servers import free_port, spawn_until_ready, stop

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--model", default="cb")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32, help="inputs per request")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    manifest = json.loads((args.export / "manifest.json").read_text())
    task = get_task(manifest["task"])
    examples = load_examples(task, args.split, limit=args.limit)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="dhrd-check-")) / "serve.log"
    started = time.perf_counter()
    server = spawn_until_ready([str(Path(sys.executable).parent / "dhrd"), "serve", "--model",
                                f"{args.model}={args.export}", "--port", str(port), "--log-level", "warning"],
                               f"{url}/ready", log, poll=0.1)
    try:
        ready_seconds = time.perf_counter() - started
        t0 = time.perf_counter()
        preds = predict_split(url, "/classify", args.model, task, examples, args.batch)
        classify_seconds = time.perf_counter() - t0
    finally:
        stop(server)
    metrics = compute_metrics(task, examples, preds)
    report = {**report_header(), "export": str(args.export),
              "served_dtype": "bfloat16 (service default)", "export_dtype": manifest["dtype"],
              "ready_seconds": round(ready_seconds, 2), "examples": len(examples), "split": args.split,
              "classify_seconds": round(classify_seconds, 2), "served_metrics": metrics,
              "training_time_metrics": manifest["metrics"].get("val")}
    out = args.out or REPO / "reports" / f"service-{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
