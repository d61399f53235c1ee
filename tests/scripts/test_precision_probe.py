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
