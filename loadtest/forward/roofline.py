"""The compute ceiling: measured matmul GFLOP/s on this machine and the model's FLOPs per sequence.

roofline QPS = sustained GFLOP/s ÷ GFLOP per sequence (forward pass of the backbone + pooled head at
the tested input length; no LM head, no generation). Scenarios are reported as a % of it.

    .venv/bin/python -m loadtest.forward roofline --export exports/cb --tokens 64
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..provenance import write_report


def matmul_gflops(dtype: torch.dtype, m: int = 2048, k: int = 576, n: int = 1536, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of (m×k)@(k×n) in `dtype`, the shape of an MLP projection over a batch."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(5):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def int8_matmul_gops(m: int = 2048, k: int = 576, n: int = 1536, seconds: float = 2.0) -> float | None:
    """Sustained int8 GOP/s (multiply-adds x 2) of the same shape through `torch._int_mm` (int8 x int8 ->
    int32): the ceiling of an int8 serving path on this CPU. oneDNN runs it with VNNI (AVX512-VNNI,
    AVX-VNNI or AMX) and otherwise falls back to a slow reference loop, which this number shows. None
    where this torch has no `_int_mm` for the CPU."""
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 128, (k, n), dtype=torch.int8)
    try:
        for _ in range(3):
            torch._int_mm(a, b)
    except (RuntimeError, AttributeError):
        return None
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch._int_mm(a, b)
        runs += 1
    return 2 * m * k * n * runs / (time.perf_counter() - start) / 1e9


def flops_per_sequence(config: dict, tokens: int, num_labels: int) -> float:
    """Forward FLOPs of a llama-style backbone + 2-layer head for one sequence of `tokens` tokens.

    Per layer and token: 2·(q,k,v,o projections) + 2·3·H·I (gated MLP) matmul FLOPs, plus attention
    scores and mixing, 2·2·T·H on average over causal positions (T/2 keys each, ×2 for QK and AV).
    """
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or h // heads
    proj = 2 * h * (heads * head_dim) * 2 + 2 * h * (kv * head_dim) * 2  # q, o and k, v
    mlp = 2 * 3 * h * i
    attention = 2 * 2 * (tokens / 2) * heads * head_dim
    head = 2 * h * h + 2 * h * num_labels  # once per sequence
    return layers * tokens * (proj + mlp + attention) + head


def roofline(export: Path, tokens: list[int], seconds: float = 2.0) -> dict:
    config = json.loads((export / "config.json").read_text())
    manifest = json.loads((export / "manifest.json").read_text())
    peaks = {name: round(matmul_gflops(dtype, seconds=seconds), 1)
             for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32))}
    int8 = int8_matmul_gops(seconds=seconds)
    if int8 is not None:  # GOP/s: a multiply-add counts 2, as a float one does
        peaks["int8"] = round(int8, 1)
    rows = []
    for t in tokens:
        gflop = flops_per_sequence(config, t, len(manifest["labels"])) / 1e9
        rows.append({"tokens": t, "gflop_per_sequence": round(gflop, 3),
                     **{f"roofline_qps_{k}": round(v / gflop, 1) for k, v in peaks.items()}})
    return {"threads": torch.get_num_threads(), "matmul_gflops": peaks, "by_length": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    write_report(roofline(args.export, args.tokens, args.seconds))


if __name__ == "__main__":
    main()
