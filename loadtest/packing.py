"""Packed against padded forward passes on a real task's inputs, as they come (not cut to one length).

    .venv/bin/python -m loadtest.packing --export exports/esnli-bench --split train --seconds 20
    .venv/bin/python -m loadtest.packing --export exports/boolq-bench --split train --json out.json

The inputs are the export's task's examples of `--split` (never e-SNLI's test rows: its train split is
the released-valid file), tokenised as the service tokenises them, in file order, cut into batches the
way the batcher cuts them (at most `--max-batch-size` sequences and `--max-batch-tokens` real tokens).
The same batches run packed (what `dhrd serve` runs now) and padded to each batch's longest (what it ran
before), alternating batch by batch so that drift of the machine hits both alike. Reported per mode:
sequences/s, real tokens/s, computed tokens and the padding share (computed tokens that are padding).
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def cut(lengths: list[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of consecutive inputs cut into batches by a size cap and a real-token budget (batcher._cut)."""
    batches, current, tokens = [], [], 0
    for i, n in enumerate(lengths):
        if current and (len(current) == max_batch_size or tokens + n > max_batch_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += n
    return batches + ([current] if current else [])


def measure(export: Path, split: str, limit: int, seconds: float, max_batch_size: int, max_batch_tokens: int,
            dtype: str) -> dict:
    from contract.data import load_examples
    from service.runner import ModelRunner

    runner = ModelRunner.from_export(export, dtype=dtype)
    runner.warmup()
    fields = [e.fields for e in load_examples(runner.task, split, limit=limit)]
    ids = [runner.encode(f, i, truncate=True).ids for i, f in enumerate(fields)]
    batches = [[ids[i] for i in b] for b in cut([len(x) for x in ids], max_batch_size, max_batch_tokens)]
    modes = {"packed": None, "padded": "benchmark"}  # runner.packing_off: None runs packed when it can
    stats = {m: {"seconds": 0.0, "sequences": 0, "real_tokens": 0, "computed_tokens": 0, "passes": 0} for m in modes}
    for batch in batches[:2]:  # warm-up, both modes
        for off in modes.values():
            runner.packing_off = off
            runner.predict(batch)
    started, i = time.perf_counter(), 0
    while time.perf_counter() - started < 2 * seconds:
        batch = batches[i % len(batches)]
        for mode, off in modes.items():
            runner.packing_off = off
            t = time.perf_counter()
            runner.predict(batch)
            s = stats[mode]
            s["seconds"] += time.perf_counter() - t
            s["passes"] += 1
            s["sequences"] += len(batch)
            s["real_tokens"] += sum(map(len, batch))
            unequal = any(len(x) != len(batch[0]) for x in batch)
            s["computed_tokens"] += (sum(map(len, batch)) if mode == "packed" and unequal
                                     else len(batch) * max(map(len, batch)))
        i += 1
    rows = {}
    for mode, s in stats.items():
        rows[mode] = {"sequences_per_s": round(s["sequences"] / s["seconds"], 1),
                      "real_tokens_per_s": round(s["real_tokens"] / s["seconds"]),
                      "padding_share": round(1 - s["real_tokens"] / s["computed_tokens"], 4),
                      "passes": s["passes"], "ms_per_pass": round(1000 * s["seconds"] / s["passes"], 1)}
    lengths = sorted(len(x) for x in ids)
    return {"export": str(export), "task": runner.task.name, "split": split, "inputs": len(ids),
            "tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
            "batches": len(batches), "max_batch_size": max_batch_size, "max_batch_tokens": max_batch_tokens,
            "dtype": dtype, "threads": torch.get_num_threads(), **rows,
            "packed_over_padded": round(rows["packed"]["sequences_per_s"] / rows["padded"]["sequences_per_s"], 2)}


def main() -> None:
    from .provenance import commit, machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--split", default="train", help="the task's split whose inputs are sent (default: train)")
    p.add_argument("--limit", type=int, default=512, help="inputs taken from the split, in file order")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per mode")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=1024)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.export, args.split, args.limit, args.seconds, args.max_batch_size, args.max_batch_tokens,
                     args.dtype)
    result.update(machine=machine(), commit=commit(), date=time.strftime("%Y-%m-%d %H:%M"))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
