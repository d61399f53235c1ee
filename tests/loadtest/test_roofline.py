"""The roofline's FLOP count agrees with the model's parameter count."""
from __future__ import annotations

import json

from loadtest.forward.roofline import flops_per_sequence, int8_matmul_gops, matmul_gflops


def test_flops_are_two_per_weight_per_token_plus_attention(tiny_backbone):
    from transformers import AutoModel

    config = json.loads((tiny_backbone / "config.json").read_text())
    model = AutoModel.from_pretrained(tiny_backbone)
    linear = sum(m.weight.numel() for m in model.modules() if m.__class__.__name__ == "Linear")
    tokens = 64
    expected_matmul = 2 * linear * tokens
    attention = config["num_hidden_layers"] * tokens * 2 * 2 * (tokens / 2) * config["hidden_size"]
    head = 2 * 64 * 64 + 2 * 64 * 3
    assert flops_per_sequence(config, tokens, 3) == expected_matmul + attention + head


def test_the_int8_ceiling_is_measured_where_torch_has_an_int8_matmul():
    import torch

    rate = int8_matmul_gops(m=32, k=64, n=64, seconds=0.05)
    assert rate is None or rate > 0
    if hasattr(torch, "_int_mm"):  # torch 2.13's CPU build has it: the column must not silently vanish
        assert rate is not None
    assert matmul_gflops(torch.float32, m=32, k=64, n=64, seconds=0.05) > 0
