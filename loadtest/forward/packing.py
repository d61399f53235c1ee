"""Packed against padded forward passes on a real task's inputs, as they come (not cut to one length).

    .venv/bin/python -m loadtest.forward packing --export exports/esnli-bench --split train --seconds 20
    .venv/bin/python -m loadtest.forward packing --export exports/boolq-bench --split train --json out.json

The inputs are the export's task's examples of `--split` (never e-SNLI's test rows: its train split is
the released-valid file), tokenised as the service tokenises them, taken in file order in rounds of
`--max-batch-size` as a saturated batcher takes its queue, and each round cut into passes by the
batcher's own function (`service.engine.batcher.cut_round`: sorted by length, then `--max-batch-tokens`
of real tokens packed, or of count x longest padded). Each round runs packed (what `dhrd serve` runs
now) and padded to each pass's longest (what it ran before), mode after mode, round by round, so
that drift of the machine hits both alike. Reported per mode:
sequences/s, real tokens/s, computed tokens and the padding share (computed tokens that are padding).
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def batches_by_mode(lengths: list[int], max_batch_size: int, max_batch_tokens: int) -> list[dict[str, list[list[int]]]]:
    """Per round of a saturated batcher (max_batch_size inputs in arrival order: `batcher.rounds`), the
    passes it is cut into in each mode (`batcher.cut_round`: sorted by length, then a token budget of
    real tokens packed, count x longest padded): the service's own cut, not a copy of it."""
    from service.engine.batcher import cut_round, rounds

    out = []
    for r in rounds(len(lengths), max_batch_size):
        round_lengths = [lengths[i] for i in r]
        out.append({mode: [[r[j] for j in batch] for batch in cut_round(round_lengths, max_batch_tokens, packed)]
                    for mode, packed in (("packed", True), ("padded", False))})
    return out


def measure(export: Path, split: str, limit: int, seconds: float, max_batch_size: int, max_batch_tokens: int,
            dtype: str) -> dict:
    from contract.data import load_examples
    from service.device.runner import ModelRunner
    from service.engine.encoder import InputEncoder

    runner = ModelRunner.from_export(export, dtype=dtype)
    runner.warmup()
    encoder = InputEncoder(runner.manifest, runner.task, runner.tokenizer)
    fields = [e.fields for e in load_examples(runner.task, split, limit=limit)]
    ids = [encoder.encode(f, i, truncate=True).ids for i, f in enumerate(fields)]
    plan = batches_by_mode([len(x) for x in ids], max_batch_size, max_batch_tokens)
    # packed: the service's rule (`predict`: packed, or padded where every length is equal); padded: always
    # padded to the pass's longest, what the service ran before packing.
    run = {"packed": runner.predict, "padded": lambda batch: runner.predict_as(batch, packed=False)}
    stats = {m: {"seconds": 0.0, "sequences": 0, "real_tokens": 0, "computed_tokens": 0, "passes": 0} for m in run}
    for mode, forward in run.items():  # warm-up, both modes
        for batch in plan[0][mode][:2]:
            forward([ids[i] for i in batch])
    started, i = time.perf_counter(), 0
    while time.perf_counter() - started < 2 * seconds:  # round by round, each mode in turn: drift hits both
        for mode, forward in run.items():
            for batch in plan[i % len(plan)][mode]:
                batch = [ids[j] for j in batch]
                t = time.perf_counter()
                forward(batch)
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
                      "sequences": s["sequences"], "passes": s["passes"], "ms_per_pass": round(1000 * s["seconds"] / s["passes"], 1)}
    lengths = sorted(len(x) for x in ids)
    return {"export": str(export), "task": runner.task.name, "split": split, "inputs": len(ids),
            "tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
            "rounds": len(plan), "passes_per_round": {m: sum(len(r[m]) for r in plan) / len(plan) for m in run},
            "rounds_timed": i, "max_batch_size": max_batch_size, "max_batch_tokens": max_batch_tokens,
            "dtype": dtype, "threads": torch.get_num_threads(), **rows,
            "packed_over_padded": round(rows["packed"]["sequences_per_s"] / rows["padded"]["sequences_per_s"], 2)}


def main(argv: list[str] | None = None) -> None:
    from ..provenance import write_report

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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    write_report(measure(args.export, args.split, args.limit, args.seconds, args.max_batch_size, args.max_batch_tokens,
                         args.dtype), args.json)


if __name__ == "__main__":
    main()
