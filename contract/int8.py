"""Int8 linear layers for a llama-style backbone that keep the answers: accuracy by construction.

Three rules, each against a known way int8 loses answers (issue 31):
- **Per-channel weight scales** (one per output row): a row of small weights keeps its resolution beside
  a row of large ones.
- **Per-token activation scales**, computed in the forward pass: a token's int8 values depend on that
  token's own row only, so a request's answer never depends on what else shares its packed batch (a
  per-tensor scale over the batch would let one outlier token crush the others' resolution).
- **SmoothQuant smoothing** (Xiao et al., 2023): activation outliers live in a few input channels; a
  per-channel factor s moves them into the weights, X' = X / s and W' = W * s, so both quantize well.
  It is folded into the layer before (the RMSNorm weight before q/k/v and gate/up; v_proj's output rows
  before o_proj; up_proj's output rows before down_proj), which is exact in float: a smoothed float model
  gives the float model's logits up to rounding (`tests/test_int8.py`).

The factors come from the task's own inputs (`calibrate`), never from the split a gate scores. Layers
named in `keep_float` stay float (the few a sensitivity ranking finds that the gate needs).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

INT8_MAX = 127


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of a 2-D tensor: (int8 values, float32 scale per row), x ~ values * scale."""
    # abs().amax() and not the inf-norm, which gives the same values but measured 10x slower on a CPU
    # (3.7 ms against 0.36 ms for 2048 x 576 bf16 rows, one thread); the division promotes a bf16 x to
    # float32 as it goes, and rounding and clamping work in place.
    scale = x.abs().amax(dim=-1).float().clamp_(min=1e-8).div_(INT8_MAX)
    values = torch.div(x, scale[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return values, scale


class SharedInput:
    """One quantization of an input for the layers that all read it: q/k/v read the same hidden states,
    and so do gate/up, so quantizing it once for them saves three of a decoder layer's seven passes over
    its activations. It holds the input object (so no other tensor can take its identity) and its
    int8 values until every member has read them, then lets both go."""

    def __init__(self, members: int):
        self.members, self.reads, self.x, self.quantized = members, 0, None, None

    def quantize(self, rows: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x is not self.x:  # a new input (or a read of the last one missed): start over
            self.x, self.quantized, self.reads = x, quantize_rows(rows), 0
        quantized = self.quantized
        self.reads += 1
        if self.reads == self.members:
            self.x = self.quantized = None
        return quantized


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored int8 per output channel and x quantized per token at run time; the
    int8 x int8 products accumulate in int32 (`torch._int_mm`), then scale back to x's dtype.

    Its scales and bias stay float32 whatever the model is cast to (`_apply`): a bf16 scale would be a
    per-channel error of up to 0.4 %, on every token, for nothing (they are one float per channel)."""

    def __init__(self, linear: nn.Linear, empty: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if empty:  # the shapes only: an export's tensors are loaded into it next (export_reader)
            values = torch.zeros(self.out_features, self.in_features, dtype=torch.int8)
            scale = torch.ones(self.out_features)
        else:
            values, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight_t", values.t().contiguous())  # (K, N): _int_mm's right operand
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.shared: SharedInput | None = None  # set by `quantize` for q/k/v and gate/up

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.weight_scale = self.weight_scale.float()
        if self.bias is not None:
            self.bias = self.bias.float()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        values, scale = quantize_rows(rows) if self.shared is None else self.shared.quantize(rows, x)
        acc = torch._int_mm(values, self.weight_t)  # (rows, N) int32; torch 2.13's CPU kernel takes any row count
        # In place on the one float32 copy: an outer product of the scales would be a second (rows, N) matrix.
        out = acc.float().mul_(scale[:, None]).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def calibrate(backbone: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |activation| at every linear layer of `backbone` over `batches` (keyword
    arguments of its forward: input_ids, attention_mask): what the smoothing factors are computed from."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            seen[name] = torch.maximum(seen[name], x) if name in seen else x
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            for batch in batches:
                backbone(**batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def smoothing_factors(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_.j|^(1 - alpha) over the layers that share input channel j."""
    w_max = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    s = act_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth(backbone: nn.Module, act_max: dict[str, torch.Tensor], alpha: float = 0.5) -> None:
    """Fold SmoothQuant factors into every decoder layer of a llama-style backbone, in place; the float
    model's outputs are unchanged up to rounding. `act_max`: `calibrate`'s result, keyed by module name."""
    for i, layer in enumerate(backbone.layers):
        attn, mlp, prefix = layer.self_attn, layer.mlp, f"layers.{i}"
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        s = smoothing_factors(act_max[f"{prefix}.self_attn.q_proj"], [m.weight for m in qkv], alpha)
        _fold(layer.input_layernorm.weight, qkv, s)
        gate_up = [mlp.gate_proj, mlp.up_proj]
        s = smoothing_factors(act_max[f"{prefix}.mlp.gate_proj"], [m.weight for m in gate_up], alpha)
        _fold(layer.post_attention_layernorm.weight, gate_up, s)
        _fold_v_into_o(attn, act_max[f"{prefix}.self_attn.o_proj"], alpha)
        s = smoothing_factors(act_max[f"{prefix}.mlp.down_proj"], [mlp.down_proj.weight], alpha)
        _fold_rows(mlp.up_proj, [mlp.down_proj], s)  # silu(gate) * up is linear in up's output


def _fold(norm_weight: torch.Tensor, linears: list[nn.Linear], s: torch.Tensor) -> None:
    norm_weight.div_(s.to(norm_weight.dtype))
    for m in linears:
        m.weight.mul_(s.to(m.weight.dtype)[None, :])


def _fold_rows(before: nn.Linear, after: list[nn.Linear], s: torch.Tensor) -> None:
    """Divide `before`'s output rows by s and multiply the input columns of `after` by s."""
    before.weight.div_(s.to(before.weight.dtype)[:, None])
    if before.bias is not None:
        before.bias.div_(s.to(before.bias.dtype))
    for m in after:
        m.weight.mul_(s.to(m.weight.dtype)[None, :])


def _fold_v_into_o(attn: nn.Module, act_max: torch.Tensor, alpha: float) -> None:
    """Attention output is a mix of V rows: linear in V, so v_proj's output channel c scaled by 1/s and
    o_proj's input channels fed by c scaled by s cancel. With grouped-query attention one V channel feeds
    one channel of each head of its group, so those share one factor (the group's largest)."""
    heads = attn.config.num_attention_heads
    kv_heads = getattr(attn.config, "num_key_value_heads", heads)
    head_dim = attn.o_proj.in_features // heads
    group = heads // kv_heads
    per_head = smoothing_factors(act_max, [attn.o_proj.weight], alpha).view(kv_heads, group, head_dim)
    s_v = per_head.amax(dim=1).reshape(-1)  # (kv_heads * head_dim,): one factor per V channel
    s_o = s_v.view(kv_heads, 1, head_dim).expand(kv_heads, group, head_dim).reshape(-1)
    attn.v_proj.weight.div_(s_v.to(attn.v_proj.weight.dtype)[:, None])
    if attn.v_proj.bias is not None:
        attn.v_proj.bias.div_(s_v.to(attn.v_proj.bias.dtype))
    attn.o_proj.weight.mul_(s_o.to(attn.o_proj.weight.dtype)[None, :])


def quantize(backbone: nn.Module, keep_float: Iterable[str] = (), empty: bool = False) -> list[str]:
    """Replace every linear layer of `backbone` but those named in `keep_float` by an `Int8Linear`, in
    place (`empty`: shapes only, to load an int8 export's tensors into). Returns the names replaced."""
    keep = set(keep_float)
    unknown = keep - {n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)}
    if unknown:
        raise ValueError(f"keep_float names no linear layer of the backbone: {sorted(unknown)[:3]}")
    targets = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Linear) and n not in keep]
    groups: dict[tuple[str, tuple[str, ...]], list[Int8Linear]] = {}
    for name, module in targets:
        parent, _, leaf = name.rpartition(".")
        layer = Int8Linear(module, empty)
        setattr(backbone.get_submodule(parent) if parent else backbone, leaf, layer)
        readers = next((g for g in SAME_INPUT if leaf in g), None)
        if readers is not None:
            groups.setdefault((parent, readers), []).append(layer)
    for members in groups.values():
        if len(members) > 1:
            shared = SharedInput(len(members))
            for layer in members:
                layer.shared = shared
    return [n for n, _ in targets]


# Linear layers of one llama-style module that read the same input tensor (LlamaAttention passes the
# hidden states to q/k/v, LlamaMLP its input to gate/up): those quantized share one quantization of it.
SAME_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


# --- int8 exports and their gate ---------------------------------------------------------------
SCHEME = "int8-w8a8-per-channel-per-token-smoothquant"
GATE_FILE = "int8-gate.json"  # written beside an int8 export's sealed files by the gate, one entry per CPU kind
ALLOW_UNGATED_FLAG = "--allow-ungated-int8"  # `dhrd serve`'s name for serving one whose gate has not passed


def gate_for(export: Path, kind: str) -> dict | None:
    """The gate's verdict for `kind` of CPU (contract.cpu.cpu_kind) recorded in an int8 export, or None
    when it never ran there. The file is outside the manifest's hashes: the gate runs after export."""
    path = Path(export) / GATE_FILE
    try:
        entries = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return None
    entry = entries.get(kind) if isinstance(entries, dict) else None
    return entry if isinstance(entry, dict) else None


def record_gate(export: Path, kind: str, verdict: dict) -> Path:
    """Add (or replace) `kind`'s verdict in the export's gate file; returns its path."""
    path = Path(export) / GATE_FILE
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries[kind] = verdict
    path.write_text(json.dumps(entries, indent=2) + "\n")
    return path


def check_gate(export: Path, kind: str, allow_ungated: bool) -> dict | None:
    """Whether an int8 export may serve on this `kind` of CPU: its gate passed here, or the operator said
    to serve it anyway (`allow_ungated`, logged by the caller). Returns the gate's verdict (None: never run
    here); raises ValueError naming the export, the CPU kind and both ways on."""
    verdict = gate_for(export, kind)
    if (verdict is None or not verdict.get("passed")) and not allow_ungated:
        state = "has not run" if verdict is None else f"failed ({', '.join(verdict.get('failed', [])) or 'see it'})"
        raise ValueError(f"{export}: an int8 export whose gate {state} on this CPU ({kind}); run `python -m "
                         f"loadtest.forward int8 --export <its float export> --int8-export {export} --gate` here, "
                         f"serve the float export, or pass {ALLOW_UNGATED_FLAG} to serve it anyway")
    return verdict
