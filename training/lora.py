"""LoRA through `peft`: wrap the backbone, mark what trains, save/load trainable weights, merge for export."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def apply_lora(backbone: nn.Module, r: int, alpha: int, dropout: float, targets: list[str]) -> nn.Module:
    """Adapters on `targets` (paper: q/k/v/o/gate/up/down, r=16, alpha=32, dropout 0.1); base frozen."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} not found in the backbone; it has e.g. "
                         f"{sorted(n for n in present if n.endswith('proj'))[:10]}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    return get_peft_model(backbone, config)


def merged(backbone: nn.Module) -> nn.Module:
    """The plain backbone with adapters folded into the base weights (a no-op without LoRA)."""
    if hasattr(backbone, "merge_and_unload"):
        return backbone.merge_and_unload()
    return backbone


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (adapters + head, or everything for full fine-tuning).

    Tied weights appear once (named_parameters de-duplicates), so safetensors can store them.
    """
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Load weights saved by `trainable_state`; every saved key must land on a parameter."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    unknown = [k for k in state if k not in params]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} weight(s) do not match the model (first: {unknown[:3]}); "
                         "was it trained with other --lora/--backbone settings?")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
