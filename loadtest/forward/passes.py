"""Where a /classify request's time goes, stage by stage, without HTTP: tokenisation, padding,
the forward pass at each batch size (eager and, optionally, `torch.compile`d), and reading results.

    .venv/bin/python -m loadtest.forward profile --export exports/cb --tokens 64
    .venv/bin/python -m loadtest.forward profile --export exports/cb --tokens 64 --compile   # as `dhrd serve --compile`

The forward rows are the service's upper bound: sequences/s with no queueing, no HTTP and no
client on the machine. `loadtest.bench` measures the whole service; the gap between the two is
per-request overhead.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..provenance import write_report


def timed(fn, seconds: float, min_runs: int = 3) -> float:
    """Mean seconds per call of `fn` over at least `seconds` (after one warm-up call)."""
    fn()
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        fn()
        runs += 1
    return (time.perf_counter() - start) / runs


def profile(export: Path, tokens: int, batch_sizes: list[int], seconds: float, compile: bool = False,
            dtype: str = "bfloat16") -> dict:
    from contract.data import load_examples
    from contract.model import pad_batch
    from service.device.runner import ModelRunner
    from service.engine.encoder import InputEncoder

    started = time.perf_counter()
    runner = ModelRunner.from_export(export, dtype=dtype, compile=compile)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    runner.warmup()
    warmup_s = time.perf_counter() - started
    fields = [e.fields for e in load_examples(runner.task, "val")][:200]
    encoder = InputEncoder(runner.manifest, runner.task, runner.tokenizer)

    def tokenise_all():
        for i, f in enumerate(fields):
            encoder.encode(f, i, truncate=True)

    per_input_tokenise = timed(tokenise_all, seconds) / len(fields)
    ids = [runner.tokenizer("x" * 4 * tokens)["input_ids"][:tokens]] * max(batch_sizes)
    rows = []
    for b in batch_sizes:
        pad = timed(lambda: pad_batch(ids[:b], runner.pad_id), seconds / 4) * 1000
        forward = timed(lambda: runner.predict(ids[:b]), seconds)
        rows.append({"batch": b, "forward_ms": round(forward * 1000, 2), "pad_ms": round(pad, 3),
                     "sequences_per_s": round(b / forward, 1), "tokens_per_s": round(b * tokens / forward)})
        print(f"[profile] batch {b:3d}: {forward * 1000:8.1f} ms  {b / forward:7.1f} seq/s", flush=True)
    return {"export": str(export), "dtype": dtype, "compile": compile, "threads": torch.get_num_threads(),
            "tokens": tokens, "load_s": round(load_s, 1), "warmup_s": round(warmup_s, 1),
            "tokenise_ms_per_input": round(per_input_tokenise * 1000, 3), "forward": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per row")
    parser.add_argument("--compile", action="store_true", help="torch.compile the classifier (as `dhrd serve --compile`)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    write_report(profile(args.export, args.tokens, args.batch_sizes, args.seconds, args.compile, args.dtype), args.out)


if __name__ == "__main__":
    main()
