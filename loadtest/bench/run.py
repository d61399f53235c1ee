"""One command for the performance report: start each scenario's server on loopback, wait for
readiness, run Locust headless over a sweep of concurrency levels, collect its CSV stats, stop
everything, and write `loadtest/results/<date>-<machine>.json` plus a markdown table and PNG plots.

    scripts/benchmark.sh                                                   # full report (~25 min here)
    .venv/bin/python -m loadtest.bench --export exports/cb --smoke       # seconds: keeps the runner honest (report in a temp dir)

Scenarios (same machine, same model, one run): DHRD /classify with dynamic batching; the same
service with batching off (the naive floor); the CoT endpoint, batched and unbatched, with the
paper's decoding (≤ 500 new tokens) and a shorter-CoT variant; and the roofline.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from .. import REPO
from ..provenance import report_header
from .measure import measure
from .report import markdown, write
from .scenarios import Scenario, fixed_length_inputs, scenarios
from .summary import derive


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--int8-export", type=Path, default=None,
                        help="the int8 export of --export (dhrd quantize) for the dhrd-int8 scenario; without it "
                             "that scenario is skipped and the report says so")
    parser.add_argument("--smoke", action="store_true", help="tiny sweep, 3 s per level, 8 CoT tokens")
    parser.add_argument("--tokens", type=int, default=64,
                        help="cut every input to exactly this many tokens (0: the real validation texts, mixed lengths)")
    parser.add_argument("--accuracy-limit", type=int, default=None,
                        help="validation examples for the accuracy points (default: the whole split)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the report goes (default: loadtest/results/; with --smoke a temporary "
                             "directory, so a smoke run leaves no files in the repository)")
    parser.add_argument("--benchmarks", type=Path, default=None,
                        help="also rewrite the measured block of this markdown file (BENCHMARKS.md)")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.cot_tokens, args.short_cot_tokens, args.accuracy_limit = 3, 8, 4, 8
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="dhrd-smoke-")) if args.smoke else REPO / "loadtest" / "results"
    return args


def chosen(args: argparse.Namespace) -> list[Scenario]:
    """The default scenarios, or those named in --only; the peer only with --peer-hf."""
    return [s for s in scenarios(args.smoke, args.cot_tokens, args.short_cot_tokens)
            if (s.name in (args.only or []) or (args.only is None and not s.optional))
            and (args.peer_hf is not None or not s.peer) and (args.int8_export is not None or not s.int8)]


def run_scenarios(args: argparse.Namespace) -> list[dict]:
    os.environ.setdefault("DHRD_LOAD_MODEL", args.model)
    with tempfile.TemporaryDirectory(prefix="dhrd-load-") as tmp:
        if args.tokens:
            os.environ["DHRD_LOAD_INPUTS"] = str(fixed_length_inputs(args.export, args.tokens, Path(tmp) / "in.json"))
        int8 = args.int8_export.resolve() if args.int8_export else None
        return [measure(args.export.resolve(), args.model, s, args.seconds, Path(tmp), args.peer_hf,
                        args.accuracy_limit, int8) for s in chosen(args)]


def build_report(args: argparse.Namespace, results: list[dict]) -> dict:
    from contract.model import resolve_dtype

    from ..forward.passes import profile
    from ..forward.roofline import roofline

    skipped = ([] if args.peer_hf else ["peer-infinity: no --peer-hf export given (needs a --head linear model "
                                        "exported with --hf-seqcls, and loadtest/setup_peer.sh)"]) + (
        [] if args.int8_export else ["dhrd-int8: no --int8-export given (dhrd quantize EXPORT --out DIR)"])
    report = {**report_header(),
              "export": str(args.export), "int8_export": str(args.int8_export) if args.int8_export else None,
              "scenarios": results, "skipped": skipped,
              "serving_dtype": resolve_dtype("auto", "cpu"),  # what `dhrd serve` (--dtype auto) ran in
              "tokens": args.tokens or "validation texts (mixed lengths)",
              "roofline": roofline(args.export, sorted({args.tokens or 64, 64, 128}),
                                   seconds=0.5 if args.smoke else 3.0),
              # forward passes alone, no HTTP and no client: the ceiling the service's overheads come off
              "forward_only": profile(args.export, args.tokens or 64, [1, 8, 16, 32],
                                      seconds=0.3 if args.smoke else 3.0, dtype=resolve_dtype("auto", "cpu"))}
    report["summary"] = derive(report, args.tokens or 64)
    return report


def main() -> int:
    args = parse_args()
    report = build_report(args, run_scenarios(args))
    stem = f"{time.strftime('%Y-%m-%d')}-{platform.node() or 'machine'}{'-smoke' if args.smoke else ''}"
    write(report, args.out, stem, args.benchmarks)
    print(markdown(report))
    print(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
