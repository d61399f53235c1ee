"""Int8 against float forward passes of one export: are the answers kept, and is it faster? (issue 31)

    .venv/bin/python -m loadtest.forward int8 --export exports/esnli-bench --split val --limit 2000 --seconds 30
    .venv/bin/python -m loadtest.forward int8 --export ... --rank-inputs 64 --keep-float top:8 --gate

The int8 model is the float export with SmoothQuant factors from `--calibration` inputs of the task's
train split (never the scored split) folded in, every linear layer of the backbone in int8 (per-channel
weights, per-token activations: contract/int8.py) but those named in `--keep-float`, and the rest
(embeddings, norms, attention, the head) in `--dtype` (auto: what the service serves in on this CPU).
`--rank-inputs N` ranks every linear layer's sensitivity (that layer alone in int8, mean |Δp|) on the N
train inputs after the calibration ones; `--keep-float top:K` keeps the K most sensitive in float.
Reported:
- answers, on `--limit` inputs of `--split`: top-1 agreement, the 99th percentile and the largest |Δp| over
  every class probability, of int8 against the float32 model; with a bf16 `--dtype`, also int8 against
  bf16 and bf16 against float32 (the floor: how far the service's own default moves the answers);
- batch invariance: each of the first `--invariance` inputs alone against inside a full packed pass of
  other inputs, largest |Δp| (float and int8 alike: packing itself moves float rounding a little);
- speed: sequences/s of packed passes cut as the batcher cuts them, float and int8 round by round;
- the sustained matmul rates of both (the roofline's), measured in the same run.
`--gate` also writes reports/int8/<cpu kind>-<date>.json in the issue's schema (`gate_report`), with the
thresholds (`GATE`) and which failed. Forward passes only, no HTTP. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from contract.cpu import cpu_kind


def smoothed_copy(runner, calibration: list[list[int]], alpha: float, dtype: str):
    """A copy of a float32 `runner` with SmoothQuant factors from `calibration` ids folded in (each input run
    alone: no padding token's activations count), cast to `dtype`; still float, so its answers are the
    float model's up to rounding."""
    from contract.int8 import calibrate, smooth
    from contract.model import DTYPES

    q = copy.copy(runner)
    q.model = copy.deepcopy(runner.model).float()
    backbone = q.model.backbone
    smooth(backbone, calibrate(backbone, [{"input_ids": torch.tensor([ids])} for ids in calibration]), alpha)
    q.model.to(DTYPES[dtype])  # before quantize: the int8 layers keep their scales in float32
    return q


def int8_runner(runner, calibration: list[list[int]], alpha: float, keep_float: list[str], dtype: str):
    """`smoothed_copy` with every backbone linear layer but those in `keep_float` in int8; the rest in `dtype`."""
    from contract.int8 import quantize

    q = smoothed_copy(runner, calibration, alpha, dtype)
    quantize(q.model.backbone, keep_float)
    return q


def rank_layers(reference, smoothed, ids: list[list[int]]) -> list[dict]:
    """Each backbone linear layer of `smoothed` in int8 alone, the rest float: mean and largest |Δp| against
    `reference` on `ids` (train inputs: the ranking is a choice, never made on a scored split). Most
    sensitive first: the layers `--keep-float top:K` keeps in float."""
    from torch import nn

    from contract.int8 import Int8Linear

    backbone = smoothed.model.backbone
    base = torch.tensor(reference.predict(ids))
    ranked = []
    for name, module in [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]:
        parent, _, leaf = name.rpartition(".")
        owner = backbone.get_submodule(parent) if parent else backbone
        setattr(owner, leaf, Int8Linear(module))
        try:
            d = (torch.tensor(smoothed.predict(ids)) - base).abs()
        finally:
            setattr(owner, leaf, module)
        ranked.append({"layer": name, "mean_abs_dprob": round(float(d.mean()), 6),
                       "max_abs_dprob": round(float(d.max()), 6)})
    return sorted(ranked, key=lambda r: -r["mean_abs_dprob"])


def probabilities(runner, ids: list[list[int]], batch: int = 32) -> torch.Tensor:
    """(len(ids), K) class probabilities of `runner`, in passes of `batch` inputs."""
    return torch.cat([torch.tensor(runner.predict(ids[i:i + batch])) for i in range(0, len(ids), batch)])


def answers(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Two models' probabilities on the same inputs: top-1 agreement, 99th percentile and largest |Δp|."""
    d = (a - b).abs().flatten()
    return {"inputs": a.shape[0], "agreement": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 5),
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


GATE = {"agreement": 0.995, "p99_abs_dprob": 0.02, "max_abs_dprob": 0.05, "batch_invariance_max_abs_dprob": 0.005}


def resolve_keep_float(spec: list[str], ranking: list[dict] | None) -> list[str]:
    """`--keep-float` as layer names: names as given, or `top:K`, the K most sensitive of `ranking`."""
    if len(spec) == 1 and spec[0].startswith("top:"):
        if ranking is None:
            raise ValueError("--keep-float top:K needs the sensitivity ranking (--rank-inputs > 0)")
        return [r["layer"] for r in ranking[: int(spec[0].split(":", 1)[1])]]
    return spec


def gate(result: dict) -> dict:
    """The issue's gate over a `measure` result: int8 against the float export's float32 answers on the
    scored split, and a request alone against inside a full packed pass."""
    a = result["answers"]["int8_vs_float32"]
    got = {"agreement": a["agreement"], "p99_abs_dprob": a["p99_abs_dprob"], "max_abs_dprob": a["max_abs_dprob"],
           "batch_invariance_max_abs_dprob": result["batch_invariance_max_abs_dprob"]["int8"]}
    failed = [k for k, limit in GATE.items() if (got[k] < limit if k == "agreement" else got[k] > limit)]
    return {**got, "thresholds": GATE, "failed": failed, "passed": not failed}


def measure(export: Path, split: str, limit: int, calibration: int, seconds: float, dtype: str, alpha: float,
            keep_float: list[str], invariance: int, max_batch_size: int, max_batch_tokens: int,
            rank_inputs: int = 0, int8_export: Path | None = None) -> dict:
    """`int8_export`: judge that int8 export (`dhrd quantize`) against `export`; else build the int8 model here."""
    from contract.data import load_examples
    from service.device.runner import ModelRunner
    from service.engine.encoder import InputEncoder

    from .roofline import int8_matmul_gops, matmul_gflops

    reference = ModelRunner.from_export(export, dtype="float32")
    encoder = InputEncoder(reference.manifest, reference.task, reference.tokenizer)

    def encoded(which: str, n: int) -> list[list[int]]:
        fields = [e.fields for e in load_examples(reference.task, which, limit=n)]
        return [encoder.encode(f, i, truncate=True).ids for i, f in enumerate(fields)]

    ids, ranking, started = encoded(split, limit), None, time.perf_counter()
    if int8_export is not None:
        int8 = ModelRunner.from_export(int8_export, dtype=dtype)
        q = int8.manifest.quantization
        if q is None:
            raise SystemExit(f"--int8-export {int8_export}: a float export (its manifest has no quantization)")
        alpha, keep_float, calibrated, ranked = q["smoothquant_alpha"], q["keep_float"], q["calibration"]["inputs"], 0
    else:
        train = encoded("train", calibration + rank_inputs)
        calibration_ids, ranking_ids = train[:calibration], train[calibration:]
        ranking = rank_layers(reference, smoothed_copy(reference, calibration_ids, alpha, "float32"),
                              ranking_ids) if ranking_ids else None
        keep_float = resolve_keep_float(keep_float, ranking)
        int8 = int8_runner(reference, calibration_ids, alpha, keep_float, dtype)
        calibrated, ranked = len(calibration_ids), len(ranking_ids)
    build_s = time.perf_counter() - started
    served = ModelRunner.from_export(export, dtype=dtype)  # the float model as `dhrd serve --dtype` serves it
    lengths = sorted(len(x) for x in ids)
    p_float, p_int8 = probabilities(reference, ids), probabilities(int8, ids)  # each model's passes run once
    answers_ = {"int8_vs_float32": answers(p_float, p_int8)}
    if dtype != "float32":  # the floor: how far the float model's own default dtype moves its answers
        p_served = probabilities(served, ids)
        answers_[f"int8_vs_{dtype}"] = answers(p_served, p_int8)
        answers_[f"{dtype}_vs_float32"] = answers(p_float, p_served)
    speed = throughput({dtype: served, "int8": int8}, ids, seconds, max_batch_size, max_batch_tokens)
    return {
        "export": str(export), "int8_export": str(int8_export) if int8_export else None, "task": reference.task.name, "split": split, "dtype": dtype, "alpha": alpha,
        "keep_float": keep_float, "calibration_inputs": calibrated, "ranking_inputs": ranked,
        "int8_build_s": round(build_s, 1), "tokens_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
        "threads": torch.get_num_threads(),
        "answers": answers_,
        "batch_invariance_max_abs_dprob": {"float": batch_invariance(served, ids, invariance, max_batch_size,
                                                                     max_batch_tokens),
                                           "int8": batch_invariance(int8, ids, invariance, max_batch_size,
                                                                    max_batch_tokens)},
        "throughput": speed,
        "speedup_vs_dtype": round(speed["int8"]["sequences_per_s"] / speed[dtype]["sequences_per_s"], 3),
        "matmul_gops": {dtype: round(matmul_gflops(getattr(torch, dtype), seconds=2.0), 1),
                        "int8": int8_matmul_gops(seconds=2.0)},
        "sensitivity_ranking": ranking[:20] if ranking else None,
    }


def gate_report(result: dict, header: dict) -> dict:
    """The gate's report in the issue's schema (reports/int8/<cpu>-<date>.json), with the measurement under it.
    `speedup_vs_default` is packed forward passes at saturation (device work only, no HTTP): the front end
    adds the same cost to both, so the service's ratio lies between 1 and this one."""
    machine = header["machine"]
    return {"cpu": machine["cpu"], "cpu_kind": cpu_kind(machine["cpu"], machine["cpu_flags"]),
            "cpu_flags": machine["cpu_flags"], "default_dtype": result["dtype"],
            **gate(result), "speedup_vs_default": result["speedup_vs_dtype"],
            "speedup_measured_as": "packed forward passes at saturation, cut as the batcher cuts them",
            "commit": header["commit"], "command": header["command"], "date": header["date"], "measurement": result}


def main(argv: list[str] | None = None) -> None:
    from contract.model import resolve_dtype

    from ..provenance import REPO, report_header, write_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, required=True, help="the float export")
    p.add_argument("--int8-export", type=Path, default=None,
                   help="an int8 export of it (`dhrd quantize`) to judge; with --gate its verdict for this kind of "
                        "CPU is recorded in it (what `dhrd serve` checks). Default: build the int8 model here")
    p.add_argument("--split", default="val", help="the split whose answers are compared (never e-SNLI rows 2000+)")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--calibration", type=int, default=256, help="train inputs the smoothing factors come from")
    p.add_argument("--rank-inputs", type=int, default=0,
                   help="train inputs (after the calibration ones) to rank the layers' sensitivity on; 0: no ranking")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant's migration strength")
    p.add_argument("--keep-float", default="",
                   help="comma-separated backbone linear layers kept in float, or top:K (the K most sensitive "
                        "of the ranking)")
    p.add_argument("--invariance", type=int, default=32, help="inputs checked alone against inside a packed pass")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-batch-tokens", type=int, default=1024)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="the float model's dtype (auto: the service's default on this CPU), and the int8 "
                        "model's for what stays float")
    p.add_argument("--gate", action="store_true",
                   help="also write the gate's report, reports/int8/<cpu kind>-<date>.json")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.split == "confirm":
        raise SystemExit("--split confirm: e-SNLI test rows 2000-5999 are the confirmation's only")
    keep = [n for n in args.keep_float.split(",") if n]
    if keep and keep[0].startswith("top:") and args.rank_inputs <= 0:
        raise SystemExit("--keep-float top:K needs --rank-inputs > 0 (the ranking it picks from)")
    result = write_report(measure(args.export, args.split, args.limit, args.calibration, args.seconds,
                                  resolve_dtype(args.dtype, "cpu"), args.alpha, keep, args.invariance,
                                  args.max_batch_size, args.max_batch_tokens, args.rank_inputs, args.int8_export),
                          args.json)
    if args.gate:
        header = report_header()
        report = gate_report(result, header)
        out = REPO / "reports" / "int8" / f"{report['cpu_kind']}-{header['date'][:10]}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        if args.int8_export is not None:
            from contract.int8 import record_gate

            record_gate(args.int8_export, report["cpu_kind"], {k: report[k] for k in (
                "passed", "failed", "agreement", "p99_abs_dprob", "max_abs_dprob", "batch_invariance_max_abs_dprob",
                "speedup_vs_default", "default_dtype", "commit", "date", "command")} | {"report": str(out)})
        print(f"[int8] gate {'PASSED' if report['passed'] else 'FAILED ' + ', '.join(report['failed'])}: {out}")


if __name__ == "__main__":
    main()
