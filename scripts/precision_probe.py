"""Where does bf16 autocast hurt the pooled classifier? (issue 33) Forward and gradient probes, no training.

    .venv/bin/python scripts/precision_probe.py --task esnli --examples 64 --json reports/precision/probe-<cpu>.json
    .venv/bin/python scripts/precision_probe.py --run runs/precision/esnli/a0-2x-s0-fp32 ...   # a trained model

The pooled feature is the last input token's final hidden state. Every e-SNLI input ends with the same
template tokens, so that state is mostly the same vector for every input: what tells inputs apart is a
small part of it. bf16's rounding error is relative to the whole vector. This script measures both, layer
by layer, on train inputs (never a scored split):
- `spread`: how far inputs' features lie from their mean, relative to the features' norm (signal);
- `bf16_error`: |h_bf16 - h_fp32| / |h_fp32| for the same input (noise), and the ratio spread / error;
- gradients of one a0 micro-batch's classification loss in fp32 and under bf16 autocast: cosine and
  relative error per parameter group (head, last block, first block, embedding), and each variant below;
- variants, one change at a time to bf16 autocast: the head in fp32; attention in eager (matmul + fp32
  softmax) instead of SDPA. (The final RMSNorm already computes in fp32 under autocast: HF casts its input
  up, and the residual stream stays fp32 since fp32 + bf16 promotes to fp32.)
The model is the a0 arm's initial model (base backbone + seeded head) or, with --run, a run's last
checkpoint. Run it on an otherwise idle machine for the timings to mean anything; the numbers it reports
are not timings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from contract.data import load_examples  # noqa: E402
from contract.encoding import load_tokenizer  # noqa: E402
from contract.model import position_ids_from_mask  # noqa: E402
from contract.tasks import get_task  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import build_features, collate  # noqa: E402
from training.loop import seed_everything  # noqa: E402
from training.splits import is_held_out  # noqa: E402
from training.model import make_model  # noqa: E402
from training.run_dir import load_run_model, resolve_backbone  # noqa: E402

def groups(model) -> dict:
    """Parameter groups compared: the head, the last and first decoder blocks, the embedding."""
    last = model.backbone.config.num_hidden_layers - 1
    return {"head": lambda n: n.startswith("head."),
            "last_block": lambda n: f".layers.{last}." in n,
            "first_block": lambda n: ".layers.0." in n,
            "embedding": lambda n: "embed_tokens" in n}


def bf16(enabled: bool = True):
    """bf16 autocast, or (False) none: also inside an enclosing autocast, which a nullcontext would not undo."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def hidden_states(model, batch) -> tuple[torch.Tensor, ...]:
    """Every layer's state at each row's last input token: (layers + 1) tensors of (B, H), float32."""
    out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=position_ids_from_mask(batch["attention_mask"]), use_cache=False,
                         output_hidden_states=True)
    rows = torch.arange(batch["input_ids"].shape[0])
    index = batch["pool_index"]
    return tuple(h[rows, index].float() for h in out.hidden_states[:-1]) + (out.last_hidden_state[rows, index].float(),)


def geometry(model, batches) -> list[dict]:
    """Per layer: spread of features across inputs and bf16's error, both relative to the features' norm."""
    with torch.no_grad():
        ref = [torch.cat(t) for t in zip(*(hidden_states(model, b) for b in batches))]
        with bf16():
            low = [torch.cat(t) for t in zip(*(hidden_states(model, b) for b in batches))]
    rows = []
    for layer, (a, b) in enumerate(zip(ref, low)):
        norm = a.norm(dim=-1)
        spread = float(((a - a.mean(0)).norm(dim=-1) / norm).median())
        error = float(((b - a).norm(dim=-1) / norm).median())
        rows.append({"layer": layer, "norm": round(float(norm.median()), 2), "spread": round(spread, 5),
                     "bf16_error": round(error, 5), "spread_over_error": round(spread / max(error, 1e-12), 1)})
    return rows


def pooled(model, batch) -> torch.Tensor:
    """The pooled feature (final, normed state at the last input token), float32: (B, H)."""
    out = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=position_ids_from_mask(batch["attention_mask"]), use_cache=False)
    return out.last_hidden_state[torch.arange(batch["input_ids"].shape[0]), batch["pool_index"]].float()


def fp32_linear(linear: torch.nn.Linear):
    """A linear layer's forward in fp32 even inside autocast (which would otherwise cast it to bf16)."""
    import torch.nn.functional as F

    def forward(x):
        with bf16(False):
            return F.linear(x.float(), linear.weight, linear.bias)
    return forward


class BF16Only:
    """Inside autocast, run in bf16 only the linear layers that `pick(name)` selects (the others, and with
    `sdpa=False` attention's own scores and mixing, in fp32): which part's rounding is it?"""

    def __init__(self, model, pick, sdpa: bool):
        self.model, self.pick, self.sdpa = model, pick, sdpa
        self.saved: list = []

    def __enter__(self):
        import torch.nn.functional as F

        for name, m in self.model.backbone.named_modules():
            if isinstance(m, torch.nn.Linear) and not self.pick(name):
                self.saved.append((m, m.forward))
                m.forward = fp32_linear(m)
        if not self.sdpa:
            self.saved.append((F, F.scaled_dot_product_attention))
            real = F.scaled_dot_product_attention

            def fp32_sdpa(q, k, v, *args, **kwargs):
                with bf16(False):
                    mask = kwargs.get("attn_mask")
                    if mask is not None and mask.is_floating_point():
                        kwargs["attn_mask"] = mask.float()
                    return real(q.float(), k.float(), v.float(), *args, **kwargs)
            F.scaled_dot_product_attention = fp32_sdpa
        self.context = bf16()
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)
        for owner, forward in reversed(self.saved):
            if owner is torch.nn.functional:
                owner.scaled_dot_product_attention = forward
            else:
                del owner.forward  # the class's own forward again, no instance attribute left behind
        return False


# One part of the computation in bf16 at a time, the rest fp32. Linear layers compute in fp32 when
# excluded (F.linear on float32 inputs, autocast off for them), attention's scores and mixing likewise.
PARTS = {"attention projections (q, k, v, o)": (lambda n: "self_attn" in n, False),
         "MLP (gate, up, down)": (lambda n: ".mlp." in n, False),
         "attention scores and mixing (SDPA)": (lambda n: False, True),
         "everything (autocast as training uses it)": (lambda n: True, True)}


def part_errors(model, batches) -> dict[str, float]:
    """Median |pooled_bf16 - pooled_fp32| / |pooled_fp32| with only one part of the computation in bf16."""
    with torch.no_grad():
        ref = torch.cat([pooled(model, b) for b in batches])
        out = {}
        for name, (pick, sdpa) in PARTS.items():
            with BF16Only(model, pick, sdpa):
                low = torch.cat([pooled(model, b) for b in batches])
            out[name] = round(float(((low - ref).norm(dim=-1) / ref.norm(dim=-1)).median()), 5)
    return out


def layer_errors(model, batches) -> list[float]:
    """The pooled feature's relative bf16 error with autocast on inside one decoder block at a time."""
    errors = []
    with torch.no_grad():
        ref = torch.cat([pooled(model, b) for b in batches])
        for block in model.backbone.layers:
            def in_bf16(*args, _forward=block.forward, **kwargs):
                with bf16():
                    return _forward(*args, **kwargs)
            block.forward = in_bf16
            try:
                low = torch.cat([pooled(model, b) for b in batches])
            finally:
                del block.forward
            errors.append(round(float(((low - ref).norm(dim=-1) / ref.norm(dim=-1)).median()), 5))
    return errors


def gradients(model, batch, precision: str) -> dict[str, torch.Tensor]:
    """Flattened gradient per group of one micro-batch's classification loss."""
    model.zero_grad(set_to_none=True)
    eager = precision == "bf16-eager-attention"
    if eager:
        model.backbone.set_attn_implementation("eager")
    try:
        with bf16(precision != "fp32"):
            hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    position_ids=position_ids_from_mask(batch["attention_mask"]), use_cache=False)
            feature = hidden.last_hidden_state[torch.arange(batch["input_ids"].shape[0]), batch["pool_index"]]
            with bf16(precision not in ("fp32", "bf16-head-fp32")):
                logits = model.head(feature.float()).float()
        loss = torch.nn.functional.cross_entropy(logits, batch["cls_labels"])
        loss.backward()
    finally:
        if eager:
            model.backbone.set_attn_implementation("sdpa")
    return {g: torch.cat([p.grad.flatten().float() for n, p in model.named_parameters()
                          if p.grad is not None and pick(n)]) for g, pick in groups(model).items()}


def gradient_agreement(model, batches, variants: list[str]) -> dict:
    model.eval()  # no head dropout: the two passes must see the same function
    out: dict[str, dict] = {}
    for v in variants:
        names = list(groups(model))
        cos: dict[str, list[float]] = {g: [] for g in names}
        rel: dict[str, list[float]] = {g: [] for g in names}
        for batch in batches:
            ref = gradients(model, batch, "fp32")
            got = gradients(model, batch, v)
            for g in names:
                cos[g].append(float(torch.nn.functional.cosine_similarity(ref[g], got[g], dim=0)))
                rel[g].append(float((got[g] - ref[g]).norm() / ref[g].norm().clamp(min=1e-30)))
        out[v] = {g: {"cosine": round(sum(cos[g]) / len(cos[g]), 4), "rel_error": round(sum(rel[g]) / len(rel[g]), 4)}
                  for g in names}
    return out


def load_model(task_name: str, run: Path | None, seed: int, backbone: Path | None):
    """(model, tokenizer, config, task): a run's last checkpoint, or the a0 arm's initial model (the
    backbone, default the embedded one, with the head seeded as a run of `seed` seeds it)."""
    if run is not None:
        return load_run_model(run, "last")
    cfg = TrainConfig(out=Path("/nonexistent"), task=task_name, alpha=0.0, seed=seed, precision="fp32",
                      backbone=backbone)
    task = get_task(task_name)
    path = resolve_backbone(cfg)
    seed_everything(seed)
    return make_model(cfg, task.num_labels, path), load_tokenizer(path, False), cfg, task


def probe(model, tokenizer, cfg, task, examples: int, batch_size: int) -> dict:
    """Geometry over `examples` train inputs (outside the held-out slice), gradients over the first 4 batches."""
    train = [e for e in load_examples(task, "train", cfg.data_dir) if not is_held_out(cfg, task, e)][:examples]
    feats = [build_features(task, e, tokenizer, cfg.max_length) for e in train]
    batches = [collate(feats[i:i + batch_size], tokenizer.pad_token_id) for i in range(0, len(feats), batch_size)]
    model.eval()
    return {"task": task.name, "examples": len(feats), "geometry": geometry(model, batches),
            "pooled_error_one_part_in_bf16": part_errors(model, batches),
            "pooled_error_one_block_in_bf16": layer_errors(model, batches),
            "gradients_vs_fp32": gradient_agreement(model, batches[:4], VARIANTS)}


VARIANTS = ["bf16", "bf16-head-fp32", "bf16-eager-attention"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="esnli")
    p.add_argument("--examples", type=int, default=64, help="train inputs (the held-out slice's complement)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", type=Path, default=None, help="a run directory: probe its last checkpoint")
    p.add_argument("--backbone", type=Path, default=None, help="without --run: this backbone, not the embedded one")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, cfg, task = load_model(args.task, args.run, args.seed, args.backbone)
    result = {"run": str(args.run) if args.run else "a0 initial model",
              **probe(model, tokenizer, cfg, task, args.examples, args.batch_size)}
    from loadtest.provenance import write_report

    write_report(result, args.json)


if __name__ == "__main__":
    main()
