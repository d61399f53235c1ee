"""`python -m loadtest.gpu`: the command (see the package's docstring), and one device call's run."""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from .. import REPO
from ..provenance import report_header
from .ceiling import ceiling_stage, forward_ceiling
from .export import SHAPES, write_export, write_stage
from .plan import CALL_BUDGET_S, CALLS, WATCHDOG_GRACE_S, budgets_of, print_plan
from .report import batch1, device_name, judge, markdown
from .serving import classify_stage, cot_stage, null_stage
from .stages import Stages, saver, watchdog

from . import __doc__ as KIT  # the package's docstring: the kit, its calls and stages


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu", description=KIT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
