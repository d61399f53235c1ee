"""The roofline's FLOP count agrees with the model's parameter count."""
from __future__ import annotations

import json

from loadtest.forward.roofline import flops_per_sequence


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
