#!/usr/bin/env python3
"""Train one task under several settings, one run after another, and write a measured report.

Each setting is a `dhrd train` run; the report records wall time, tokens/s, the validation
metrics of the best epoch, and the machine, date, commit and exact command, as JSON under
reports/ and as a markdown table on stdout (paste it into TRAINING.md).

    .venv/bin/python scripts/report_training.py --task cb --setting a1=--alpha,1 --setting a0=--alpha,0
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python scripts/...`: this checkout's packages
from loadtest.provenance import report_header  # noqa: E402


def cuda() -> str | None:
    """The GPU the runs could use (None: CPU only); the rest of the machine is report_header's."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def run_setting(task: str, name: str, flags: list[str], runs_dir: Path, extra: list[str]) -> dict:
    out = runs_dir / f"{task}-{name}"
    cmd = [".venv/bin/dhrd", "train", "--task", task, "--out", str(out), *flags, *extra]
    if (out / "summary.json").exists():
        print(f"[report] {name}: reusing finished run {out}", flush=True)
        wall = json.loads((out / "report_wall.json").read_text())["wall_seconds"] if (out / "report_wall.json").exists() else None
    else:
        if (out / "checkpoints" / "last.pt").exists():
            cmd.append("--resume")
        print(f"[report] {name}: {shlex.join(cmd)}", flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        wall = round(time.time() - t0, 1)
        (out / "report_wall.json").write_text(json.dumps({"wall_seconds": wall}) + "\n")
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_seconds = log[-1]["time"] - log[0]["time"] if len(log) > 1 else None
    return {"setting": name, "command": shlex.join(cmd), "wall_seconds": wall, "steps": summary["steps"],
            "tokens": summary["tokens"],
            "tokens_per_s": round(summary["tokens"] / train_seconds, 1) if train_seconds else None,
            "best_epoch": summary["best"]["epoch"] if summary["best"] else None,
            "val": summary["best"]["val"] if summary["best"] else None,
            "final_val": summary["history"][-1]["val"] if summary["history"] else None,
            # runs from before the field existed report None
            "peak_rss_mb": summary.get("peak_rss_mb_this_process")}


def markdown(report: dict) -> str:
    keys = [k for k in report["results"][0]["val"] if k != "score"]
    head = ("| setting | wall (s) | steps | train tokens | tokens/s | peak RSS (MB) | best epoch | "
            + " | ".join(f"val {k}" for k in keys))
    rows = [head + " |", "|" + "---|" * (7 + len(keys))]
    for r in report["results"]:
        vals = " | ".join(f"{r['val'][k]:.4f}" for k in keys)
        rows.append(f"| {r['setting']} | {r['wall_seconds']} | {r['steps']} | {r['tokens']} | {r['tokens_per_s']} | "
                    f"{r.get('peak_rss_mb')} | {r['best_epoch']} | {vals} |")
    m = report["machine"]
    rows.append("")
    rows.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; date {report['date']}; "
                f"commit {report['commit']}; command `{report['command']}`.")
    return "\n".join(rows)


def main() -> int:
    os.chdir(REPO)  # commands and paths in the report are relative to the repository
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cb")
    parser.add_argument("--setting", action="append", required=True,
                        help="NAME=FLAG,VALUE,... (comma-separated `dhrd train` flags), repeatable")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs") / "report")
    parser.add_argument("--out", type=Path, default=None, help="report JSON (default reports/training-<task>.json)")
    parser.add_argument("extra", nargs="*", help="flags passed to every run (after --)")
    args = parser.parse_args()
    results = []
    for setting in args.setting:
        name, _, flags = setting.partition("=")
        results.append(run_setting(args.task, name, [f for f in flags.split(",") if f], args.runs_dir, args.extra))
    report = {"task": args.task, **report_header(), "results": results}
    report["machine"]["cuda"] = cuda()
    out = args.out or REPO / "reports" / f"training-{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
