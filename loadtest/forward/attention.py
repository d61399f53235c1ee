"""Packed vs padded forward passes on CPU, and which attention a packed pass should use there.

    .venv/bin/python -m loadtest.forward attention             # SmolLM2-135M's shape, random weights
    .venv/bin/python -m loadtest.forward attention --layers 4 --seconds 0.5 --json /tmp/attention.json

For each batch shape it times the padded forward (what `dhrd serve` ran before packing) and the packed
forward with three CPU attention kernels: `repad` (contract.model.varlen_attention_repad: scatter into a
right-padded block, causal SDPA, gather), `dense` (one (N, N) block-diagonal causal mask, as transformers
builds from packed position_ids) and `loop` (causal SDPA per sequence). The weights are random: the time
of a forward pass does not depend on them. Measure on a quiet machine; numbers from a shared one are noise.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from ..provenance import report_header

# (name, sequences, token lengths): the kit's 68-token request at several batch sizes, and mixed lengths.
SHAPES = [("kit-68 x1", 1, (68, 68)), ("kit-68 x4", 4, (68, 68)), ("kit-68 x15", 15, (68, 68)),
          ("mixed x8", 8, (8, 200)), ("mixed x32", 32, (8, 60)), ("one-long+short x8", 8, None)]


def dense_kernel(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """(N, N) block-diagonal causal boolean mask over the whole stream."""
    n = q.shape[0]
    token = torch.arange(n)
    seq = torch.searchsorted(cu_seqlens.long()[1:], token, right=True)
    mask = (seq[:, None] == seq[None, :]) & (token[:, None] >= token[None, :])
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                                           v.transpose(0, 1)[None], attn_mask=mask, scale=scale,
                                                           enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)


def loop_kernel(q, k, v, cu_seqlens, max_seqlen, scale=None):
    """Causal SDPA once per sequence (boundaries read on the host)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in zip(bounds, bounds[1:]):
        if e > s:
            out[s:e] = torch.nn.functional.scaled_dot_product_attention(
                q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), is_causal=True, scale=scale,
                enable_gqa=q.shape[1] != k.shape[1]).transpose(0, 1)
    return out


def smollm2_shaped(layers: int, dtype: torch.dtype):
    """SmolLM2-135M's architecture (576 wide, 9 heads over 3 KV heads, 1536 MLP) with random weights."""
    from transformers import LlamaConfig, LlamaModel

    from contract.manifest import HeadConfig
    from contract.model import ClassifierHead, PooledClassifier

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                         rope_theta=100000.0, pad_token_id=2)
    torch.manual_seed(0)
    head = ClassifierHead(HeadConfig(hidden_size=576, num_labels=3, dropout=0.1, type="mlp2-gelu"))
    return PooledClassifier(LlamaModel(config), head).to(dtype).eval()


def batch_of(rng: random.Random, count: int, lengths) -> list[list[int]]:
    if lengths is None:  # one long sequence among short ones: padding's worst case
        return [[rng.randrange(3, 49152) for _ in range(n)] for n in [256] + [16] * (count - 1)]
    return [[rng.randrange(3, 49152) for _ in range(rng.randint(*lengths))] for _ in range(count)]


def timed(fn, seconds: float, min_runs: int = 2) -> float:
    """Median seconds per call of `fn` over at least `seconds` (after one warm-up call)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def measure(layers: int, dtype: str, seconds: float) -> list[dict]:
    from contract.model import DTYPES, VARLEN_KERNELS, pack_batch, pad_batch, varlen_attention_repad

    model = smollm2_shaped(layers, DTYPES[dtype])
    kernels = {"repad": varlen_attention_repad, "dense": dense_kernel, "loop": loop_kernel}
    rng, rows = random.Random(0), []
    for name, count, lengths in SHAPES:
        batch = batch_of(rng, count, lengths)
        ids, mask = pad_batch(batch, 2)
        row = {"shape": name, "sequences": count, "real_tokens": int(mask.sum()), "padded_tokens": mask.numel(),
               "padded_ms": round(timed(lambda: model(ids, mask), seconds) * 1000, 1)}
        p = pack_batch(batch, 2)
        try:
            for kernel, fn in kernels.items():
                VARLEN_KERNELS["cpu"] = fn
                row[f"packed_{kernel}_ms"] = round(timed(lambda: model.forward_packed(
                    p.input_ids, p.position_ids, p.cu_seqlens, p.last_index, p.max_seqlen), seconds) * 1000, 1)
        finally:
            VARLEN_KERNELS["cpu"] = varlen_attention_repad
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M has 30)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per (shape, variant)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.layers, args.dtype, args.seconds)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**report_header(None if argv is None else ["python", "-m", "loadtest.forward", "attention", *argv]),
                       "layers": args.layers, "dtype": args.dtype, "threads": torch.get_num_threads(),
                       "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
