"""Int8 linear layers that keep the answers (contract/int8.py): smoothing is exact in float, per-token
scales make a row's result independent of its batch, and the quantized backbone stays close to float."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from contract.int8 import Int8Linear, calibrate, quantize, quantize_rows, smooth


def backbone_of(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).base_model.eval()


def batches(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, vocab, (4, 12), generator=g),
             "attention_mask": torch.ones(4, 12, dtype=torch.long)} for _ in range(3)]


def hidden(backbone, batch) -> torch.Tensor:
    with torch.inference_mode():
        return backbone(**batch).last_hidden_state


def test_rows_quantize_symmetrically_with_a_scale_each():
    x = torch.tensor([[1.0, -2.0, 0.5], [100.0, 0.0, -50.0]])
    values, scale = quantize_rows(x)
    assert values.dtype == torch.int8 and values.abs().max() == 127
    assert torch.allclose(values.float() * scale[:, None], x, rtol=0, atol=float(scale.max()) / 2)
    assert values[0].abs().max() == 127  # the small row keeps its own resolution beside the large one


def test_smoothing_folded_into_the_layers_leaves_the_float_model_unchanged(tiny_backbone):
    backbone = backbone_of(tiny_backbone)
    data = batches(backbone.config.vocab_size)
    before = [hidden(backbone, b) for b in data]
    stats = calibrate(backbone, data)
    assert set(stats) >= {"layers.0.self_attn.q_proj", "layers.1.mlp.down_proj", "layers.0.self_attn.o_proj"}
    smooth(backbone, stats, alpha=0.5)
    for b, h in zip(data, before):
        assert torch.allclose(hidden(backbone, b), h, rtol=1e-4, atol=1e-4)
    # and it did something: the folded weights are not the original ones
    fresh = backbone_of(tiny_backbone)
    assert not torch.allclose(fresh.layers[0].self_attn.o_proj.weight, backbone.layers[0].self_attn.o_proj.weight)


def test_a_rows_int8_result_does_not_depend_on_the_rows_beside_it():
    torch.manual_seed(0)
    layer = Int8Linear(nn.Linear(64, 96))
    alone = torch.randn(1, 64)
    beside = torch.cat([alone, 100 * torch.randn(30, 64)])  # large neighbours would crush a per-batch scale
    assert torch.equal(layer(alone)[0], layer(beside)[0])


def test_int8_linear_is_close_to_float_and_smoothing_tames_an_outlier_channel():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = torch.randn(200, 64)
    x[:, 3] *= 60  # one outlier input channel, as LLM activations have
    exact = linear(x)
    plain = Int8Linear(linear)(x)
    s = (x.abs().amax(0).pow(0.5) / linear.weight.abs().amax(0).pow(0.5)).detach()
    smoothed = nn.Linear(64, 96)
    smoothed.weight.data, smoothed.bias.data = linear.weight.data * s, linear.bias.data.clone()
    folded = Int8Linear(smoothed)(x / s)

    def err(y):
        return ((y - exact).norm() / exact.norm()).item()

    assert err(folded) < 0.02
    assert err(folded) < err(plain) / 2, (err(folded), err(plain))


@pytest.mark.parametrize("keep", [(), ("layers.1.mlp.down_proj",)])
def test_a_quantized_backbone_replaces_every_linear_but_those_kept_and_stays_close(tiny_backbone, keep):
    backbone = backbone_of(tiny_backbone)
    data = batches(backbone.config.vocab_size)
    reference = [hidden(backbone, b) for b in data]
    smooth(backbone, calibrate(backbone, data))
    replaced = quantize(backbone, keep_float=keep)
    linears = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    assert linears == list(keep) and len(replaced) == 2 * 7 - len(keep)  # q k v o gate up down, two layers
    for b, h in zip(data, reference):
        out = hidden(backbone, b)
        assert ((out - h).norm() / h.norm()).item() < 0.05


def test_scales_and_bias_stay_float32_when_the_model_is_cast():
    layer = Int8Linear(nn.Linear(8, 4, bias=True)).to(torch.bfloat16)
    assert layer.weight_t.dtype == torch.int8  # .to(dtype) never touches integer tensors
    assert layer.weight_scale.dtype == torch.float32 and layer.bias.dtype == torch.float32
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16  # and it still answers in the model's dtype


def test_a_layer_to_keep_in_float_must_be_a_linear_layer_of_the_backbone(tiny_backbone):
    with pytest.raises(ValueError, match="layers.0.mlp.nope"):
        quantize(backbone_of(tiny_backbone), ["layers.0.mlp.nope"])


def test_layers_that_read_the_same_input_quantize_it_once_and_answer_as_if_alone(tiny_backbone, monkeypatch):
    """q/k/v share one quantization of the hidden states and gate/up one of theirs: 4 quantizations per
    decoder layer instead of 7, and bit-for-bit the outputs each layer gives on its own."""
    import contract.int8 as int8

    backbone = backbone_of(tiny_backbone)
    data = batches(backbone.config.vocab_size)
    smooth(backbone, calibrate(backbone, data))
    quantize(backbone)
    calls = []
    real = int8.quantize_rows
    monkeypatch.setattr(int8, "quantize_rows", lambda x: calls.append(x.shape) or real(x))
    shared = hidden(backbone, data[0])
    assert len(calls) == 4 * len(backbone.layers)
    for module in backbone.modules():
        if isinstance(module, Int8Linear):
            module.shared = None
    calls.clear()
    alone = hidden(backbone, data[0])
    assert len(calls) == 7 * len(backbone.layers) and torch.equal(shared, alone)


def test_a_shared_quantization_is_never_reused_for_another_input(tiny_backbone):
    """A group member called on a different tensor than the one before it quantizes that tensor anew."""
    backbone = backbone_of(tiny_backbone)
    quantize(backbone)
    attn = backbone.layers[0].self_attn
    width = attn.q_proj.in_features
    x, y = torch.randn(5, width), torch.randn(5, width)
    attn.q_proj(x)  # the group now holds x's quantization, one read of three
    fresh = Int8Linear(nn.Linear(width, attn.k_proj.out_features, bias=attn.k_proj.bias is not None))
    fresh.load_state_dict(attn.k_proj.state_dict())
    assert torch.equal(attn.k_proj(y), fresh(y))
    assert attn.q_proj.shared is attn.v_proj.shared and backbone.layers[0].mlp.down_proj.shared is None
