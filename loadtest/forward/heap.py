"""What the CPU heap setting buys (service/device/cpu_heap.py): one projection of a packed pass, bf16
and int8, timed in two fresh processes: glibc's default heap, then the blocks kept.

    .venv/bin/python -m loadtest.forward heap --tokens 2048 --seconds 3

A fresh process each, since the setting is process-wide and one-way. The shape is an MLP projection of
the 135M backbone (576 -> 1536) over a packed pass of `--tokens` tokens, at torch's thread count here.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..provenance import write_report

WIDTH, OUT = 576, 1536


def ms_per_call(fn, seconds: float) -> float:
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return round((time.perf_counter() - start) / calls * 1e3, 3)


def child(heap: str, tokens: int, seconds: float) -> dict:
    """In this (fresh) process: the heap as asked, then ms per call of each layer."""
    from contract.int8 import Int8Linear
    from service.device.cpu_heap import keep_freed_memory

    applied = keep_freed_memory() if heap == "kept" else False
    torch.manual_seed(0)
    linear = torch.nn.Linear(WIDTH, OUT, bias=False)
    int8, weight = Int8Linear(linear), linear.weight.detach().bfloat16()
    x = torch.randn(tokens, WIDTH, dtype=torch.bfloat16)
    with torch.inference_mode():
        return {"heap": heap, "applied": applied,
                "bf16_ms": ms_per_call(lambda: torch.nn.functional.linear(x, weight), seconds),
                "int8_ms": ms_per_call(lambda: int8(x), seconds)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--child", choices=["default", "kept"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.tokens, args.seconds)))
        return
    runs = {}
    for heap in ("default", "kept"):
        out = subprocess.run([sys.executable, "-m", "loadtest.forward.heap", "--child", heap, "--tokens",
                              str(args.tokens), "--seconds", str(args.seconds)], capture_output=True, text=True,
                             check=True)
        runs[heap] = json.loads(out.stdout.strip().splitlines()[-1])
    write_report({"shape": [args.tokens, WIDTH, OUT], "threads": torch.get_num_threads(), "runs": runs,
                  "int8_over_bf16_speed": {h: round(r["bf16_ms"] / r["int8_ms"], 2) for h, r in runs.items()}},
                 args.json)


if __name__ == "__main__":
    main()
