"""Int8 against float forward passes of one export: are the answers kept, and is it faster? (issue 31)

    .venv/bin/python -m loadtest.forward int8 --export exports/esnli-bench --split val --limit 2000 --seconds 30

The int8 model is the float export with SmoothQuant factors from `--calibration` inputs of the task's
train split (never the scored split) folded in, every linear layer of the backbone in int8 (per-channel
weights, per-token activations: contract/int8.py) but those named in `--keep-float`, and the rest
(embeddings, norms, attention, the head) in `--dtype`. Reported:
- answers, on `--limit` inputs of `--split`: top-1 agreement with the float model, the 99th percentile and
  the largest |Δp| over every class probability;
- batch invariance: each of the first `--invariance` inputs alone against inside a full packed pass of
  other inputs, largest |Δp| (float and int8 alike: packing itself moves float rounding a little);
- speed: sequences/s of packed passes cut as the batcher cuts them, float and int8 round by round;
- the sustained matmul rates of both (the roofline's), measured in the same run.
Forward passes only, no HTTP: the service's req/s at saturation is the gate's number, not this one.
Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch


def int8_runner(runner, calibration: list[list[int]], alpha: float, keep_float: list[str], dtype: str):
    """A copy of a float32 `runner` with smoothing folded in (from `calibration` ids, each run alone: no
    padding token's activations count) and its backbone's linear layers in int8; the rest cast to `dtype`."""
    from contract.int8 import calibrate, quantize, smooth
    from contract.model import DTYPES

    q = copy.copy(runner)
    q.model = copy.deepcopy(runner.model).float()
    backbone = q.model.backbone
    stats = calibrate(backbone, [{"input_ids": torch.tensor([ids])} for ids in calibration])
    smooth(backbone, stats, alpha)
    q.model.to(DTYPES[dtype])  # before quantize: the int8 layers keep their scales in float32
    quantize(backbone, keep_float)
    return q


def answers(float_runner, int8, ids: list[list[int]], batch: int = 32) -> dict:
    diffs, agree = [], 0
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        a, b = torch.tensor(float_runner.predict(chunk)), torch.tensor(int8.predict(chunk))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        diffs.append((a - b).abs().flatten())
    d = torch.cat(diffs)
    return {"inputs": len(ids), "agreement": round(agree / len(ids), 5),
            "p99_abs_dprob": round(float(d.quantile(0.99)), 5), "max_abs_dprob": round(float(d.max()), 5)}


def batch_invariance(runner, ids: list[list[int]], count: int, max_batch_size: int, max_batch_tokens: int) -> float:
    """Largest |Δp| of an input alone against the same input inside a full packed pass of other inputs."""
    worst = 0.0
    others = sorted(ids, key=len)
    for x in ids[:count]:
        batch, tokens = [x], len(x)
        for y in others:
            if len(batch) == max_batch_size or tokens + len(y) > max_batch_tokens:
                break
            batch.append(y)
            tokens += len(y)
        alone, inside = torch.tensor(runner.predict([x])[0]), torch.tensor(runner.predict(batch)[0])
        worst = max(worst, float((alone - inside).abs().max()))
    return round(worst, 6)


def throughput(models: dict, ids: list[list[int]], seconds: float, max_batch_size: int, max_batch_tokens: int) -> dict:
    from .packing import batches_by_mode

    plan = [r["packed"] for r in batches_by_mode([len(x) for x in ids], max_batch_size, max_batch_tokens)]
    stats = {m: [0.0, 0] for m in models}
    for runner in models.values():  # warm-up
        for batch in plan[0][:2]:
            runner.predict([ids[j] for j in batch])
    started, i = time.perf_counter(), 0
    while time.perf_counter() - started < len(models) * seconds:  # round by round, each model in turn
        for name, runner in models.items():
            for batch in plan[i % len(plan)]:
                t = time.perf_counter()
                runner.predict([ids[j] for j in batch])
                stats[name][0] += time.perf_counter() - t
                stats[name][1] += len(batch)
        i += 1
    return {m: {"sequences_per_s": round(n / s, 1), "sequences": n} for m, (s, n) in stats.items()} | {"rounds_timed": i}


def measure(export: Path, split: str, limit: int, calibration: int, seconds: float, dtype: str, alpha: float,
            keep_float: list[str], invariance: int, max_batch_size: int, max_batch_tokens: int) -> dict:
    from contract.data import load_examples
    from service.device.runner import ModelRunner
    from service.engine.encoder import InputEncoder

    from .roofline import int8_matmul_gops, matmul_gflops

    reference = ModelRunner.from_export(export, dtype="float32")
    encoder = InputEncoder(reference.manifest, reference.task, reference.tokenizer)

    def encoded(which: str, n: int) -> list[list[int]]:
        fields = [e.fields for e in load_examples(reference.task, which, limit=n)]
        return [encoder.encode(f, i, truncate=True).ids for i, f in enumerate(fields)]

    calibration_ids, ids = encoded("train", calibration), encoded(split, limit)
    started = time.perf_counter()
    int8 = int8_runner(reference, calibration_ids, alpha, keep_float, dtype)
    build_s = time.perf_counter() - started
    served = ModelRunner.from_export(export, dtype=dtype)  # the float model as `dhrd serve --dtype` serves it
    lengths = sorted(len(x) for x in ids)
    return {
        "export": str(export), "task": reference.task.name, "split": split, "dtype": dtype, "alpha": alpha,
        "keep_float": keep_float, "calibration_inputs": len(calibration_ids), "int8_build_s": round(build_s, 1),
        "tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        "threads": torch.get_num_threads(),
        "answers_vs_float": answers(served, int8, ids),
        "batch_invariance_max_abs_dprob": {"float": batch_invariance(served, ids, invariance, max_batch_size,
                                                                     max_batch_tokens),
                                           "int8": batch_invariance(int8, ids, invariance, max_batch_size,
                                                                    max_batch_tokens)},
        "throughput": throughput({dtype: served, "int8": int8}, ids, seconds, max_batch_size, max_batch_tokens),
        "matmul_gops": {dtype: round(matmul_gflops(getattr(torch, dtype), seconds=2.0), 1),
                        "int8": int8_matmul_gops(seconds=2.0)},
    }


def main(argv: list[str] | None = None) -> None:
    from ..provenance import write_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, required=True)
    p.add_argument("--split", default="val", help="the split whose answers are compared (never e-SNLI rows 2000+)")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--calibration", type=int, default=256, help="train inputs the smoothing factors come from")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    p.add_argument("--keep-float", default="", help="comma-separated backbone linear layers kept in float")
    p.add_argument("--invariance", type=int, default=32, help="inputs checked alone against inside a packed pass")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=1024)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="the float model's dtype, and the int8 model's for what stays float")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.split == "confirm":
        raise SystemExit("--split confirm: e-SNLI test rows 2000-5999 are the confirmation's only")
    write_report(measure(args.export, args.split, args.limit, args.calibration, args.seconds, args.dtype, args.alpha,
                         [n for n in args.keep_float.split(",") if n], args.invariance, args.max_batch_size,
                         args.max_batch_tokens), args.json)


if __name__ == "__main__":
    main()
