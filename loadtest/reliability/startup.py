"""Time from `dhrd serve` to `/ready`, for consecutive starts sharing one fresh cache directory: the
first start is cold (nothing cached), the next ones show what the on-disk caches buy (with
`--compile`, inductor's compiled kernels and graphs under $DHRD_HOME/inductor).

    .venv/bin/python -m loadtest.reliability startup --export exports/cb --flags=--compile --starts 2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from .. import REPO
from ..provenance import report_header
from ..servers import BIN, free_port, wait_until_ok


def one_start(export: Path, flags: list[str], env: dict, log: Path, timeout: float) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "dhrd"), "serve", "--model", f"cb={export}", "--port", str(port), *flags,
                             "--log-level", "warning"], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        if not wait_until_ok(f"http://127.0.0.1:{port}/ready", timeout, poll=0.2, alive=lambda: proc.poll() is None):
            raise RuntimeError(f"not ready in {timeout:g} s (exit {proc.poll()}); see {log}")
        return round(time.perf_counter() - started, 1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--flags", default="--compile", help="dhrd serve flags")
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "results" / "startup")
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="dhrd-startup-home-"))
    # A fresh, empty cache: DHRD_HOME for ours, and inductor's own default location is not used either.
    env = {**os.environ, "DHRD_HOME": str(home)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    seconds = []
    for i in range(args.starts):
        seconds.append(one_start(args.export, args.flags.split(), env, home / f"start-{i}.log", args.timeout))
        print(f"[startup] start {i + 1}: ready after {seconds[-1]} s", flush=True)
    report = {**report_header(), "export": str(args.export), "flags": args.flags, "ready_seconds": seconds}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y-%m-%d-%H%M')}-{report['machine']['node']}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
