"""scripts/precision_probe.py (issue 33) on the tiny random llama: where bf16 autocast's error sits against
the spread of the pooled feature across inputs, and how far its gradients are from fp32's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "precision_probe.py"
spec = importlib.util.spec_from_file_location("precision_probe", SCRIPT)
precision_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(precision_probe)


def probe_of(tiny_backbone, data_dir, monkeypatch):
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    model, tokenizer, cfg, task = precision_probe.load_model("cb", None, 0, tiny_backbone)
    return model, precision_probe.probe(model, tokenizer, cfg, task, examples=8, batch_size=4)


def test_every_layer_reports_spread_and_a_nonzero_bf16_error(tiny_backbone, data_dir, monkeypatch):
    model, result = probe_of(tiny_backbone, data_dir, monkeypatch)
    layers = result["geometry"]
    assert [row["layer"] for row in layers] == list(range(model.backbone.config.num_hidden_layers + 1))
    # every CB input ends with the same template token, so before any block they are one vector
    assert layers[0]["spread"] == 0 and layers[0]["bf16_error"] == 0  # and the lookup is not a matmul
    assert all(row["bf16_error"] > 0 for row in layers[1:])  # every block's matmuls ran in bf16
    assert all(row["spread"] > 0 for row in layers[1:])  # attention brought each input's own tokens in


def test_gradients_agree_with_fp32_closely_but_not_exactly(tiny_backbone, data_dir, monkeypatch):
    _, result = probe_of(tiny_backbone, data_dir, monkeypatch)
    grads = result["gradients_vs_fp32"]
    assert list(grads) == precision_probe.VARIANTS
    for group in ("head", "last_block", "first_block", "embedding"):
        assert 0.9 < grads["bf16"][group]["cosine"] <= 1.0
        assert grads["bf16"][group]["rel_error"] > 0  # bf16 was really used
    # keeping the head in fp32 removes the head's own rounding: its gradient comes closer to fp32's
    assert grads["bf16-head-fp32"]["head"]["rel_error"] <= grads["bf16"]["head"]["rel_error"]


def test_fp32_against_itself_is_exact(tiny_backbone, data_dir, monkeypatch):
    model, _ = probe_of(tiny_backbone, data_dir, monkeypatch)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "pool_index": torch.tensor([3]), "cls_labels": torch.tensor([1])}
    a = precision_probe.gradients(model, batch, "fp32")
    b = precision_probe.gradients(model, batch, "fp32")
    assert all(torch.equal(a[g], b[g]) for g in a)


def test_one_part_in_bf16_at_a_time_and_all_of_them_together(tiny_backbone, data_dir, monkeypatch):
    model, result = probe_of(tiny_backbone, data_dir, monkeypatch)
    parts = result["pooled_error_one_part_in_bf16"]
    assert set(parts) == set(precision_probe.PARTS) and all(v > 0 for v in parts.values())
    everything = parts["everything (autocast as training uses it)"]
    assert everything == result["geometry"][-1]["bf16_error"]  # the same as plain autocast
    assert len(result["pooled_error_one_block_in_bf16"]) == model.backbone.config.num_hidden_layers
    assert all(v > 0 for v in result["pooled_error_one_block_in_bf16"])
    import torch.nn.functional as F
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # put back
    assert not any("forward" in m.__dict__ for m in model.modules())  # no instance override left behind


def test_the_parts_are_really_kept_in_fp32(tiny_backbone, data_dir, monkeypatch):
    """With no linear picked and SDPA excluded, 'bf16 only' leaves nothing in bf16: the exact fp32 result."""
    monkeypatch.setenv("DHRD_DATA_DIR", str(data_dir))
    model, _, _, _ = precision_probe.load_model("cb", None, 0, tiny_backbone)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "pool_index": torch.tensor([3])}
    with torch.no_grad():
        ref = precision_probe.pooled(model, batch)
        with precision_probe.BF16Only(model, lambda n: False, sdpa=False):
            kept = precision_probe.pooled(model, batch)
        after = precision_probe.pooled(model, batch)
    assert torch.allclose(kept, ref, atol=1e-6) and torch.equal(after, ref)
