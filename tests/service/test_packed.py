"""Token-packed forward passes: one flat stream, positions restarting per sequence, attention within each
sequence, the head reading each sequence's last token, equal (fp32) to the padded forward."""
from __future__ import annotations

import random

import pytest
import torch

from contract.model import (VARLEN_KERNELS, ClassifierHead, PooledClassifier, pack_batch, pad_batch,
                            varlen_attention_repad)
from contract.manifest import HeadConfig

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma"]


def tiny_classifier(family: str = "llama", pooling: str = "last", seed: int = 0) -> PooledClassifier:
    """A tiny random backbone of `family` (2 layers, 64-dim, GQA 4:2) with a random head, fp32, eval."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(family, vocab_size=300, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=1024, pad_token_id=2)
    torch.manual_seed(seed)
    head = ClassifierHead(HeadConfig(hidden_size=64, num_labels=3, dropout=0.1, type="mlp2-gelu"))
    return PooledClassifier(AutoModel.from_config(config), head, pooling).float().eval()


def random_batches(seed: int = 0, count: int = 6, longest: int = 70):
    rng = random.Random(seed)
    return [[[rng.randrange(3, 300) for _ in range(rng.randint(1, longest))] for _ in range(rng.randint(1, 13))]
            for _ in range(count)]


def padded_logits(model, batch, pad_id=2):
    ids, mask = pad_batch(batch, pad_id)
    return model(ids, mask)


def packed_logits(model, batch, pad_id=2, **sizes):
    p = pack_batch(batch, pad_id, **sizes)
    return model.forward_packed(p.input_ids, p.position_ids, p.cu_seqlens, p.last_index, p.max_seqlen)[:len(batch)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean"])
@torch.inference_mode()
def test_packed_forward_equals_the_padded_forward_on_random_lengths(family, pooling):
    model = tiny_classifier(family, pooling)
    for batch in random_batches():
        expected = padded_logits(model, batch)
        torch.testing.assert_close(packed_logits(model, batch), expected, rtol=1e-5, atol=1e-5)
        # fixed sizes, as a CUDA graph bucket holds them: a tail of pad tokens and empty sequence slots
        torch.testing.assert_close(packed_logits(model, batch, tokens=sum(map(len, batch)) + 17, max_sequences=16,
                                                 max_seqlen=96), expected, rtol=1e-5, atol=1e-5)
    assert model.backbone.config._attn_implementation == "sdpa"  # the padded path's attention is restored


@torch.inference_mode()
def test_packed_forward_of_the_fixture_export_gives_the_runner_probabilities():
    from service.device.runner import ModelRunner

    runner = ModelRunner.from_export("tests/fixtures/export-v1-cb", dtype="float32")
    for batch in random_batches(1):
        torch.testing.assert_close(packed_logits(runner.model, batch, runner.pad_id),
                                   padded_logits(runner.model, batch, runner.pad_id), rtol=1e-5, atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
@torch.inference_mode()
def test_packed_forward_equals_the_padded_forward_on_the_real_backbone():
    """SmolLM2-135M (30 layers, GQA 9:3), fp32, a random head: packed logits are the padded ones."""
    from transformers import AutoModel

    from training import base_model

    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(base_model.materialise(), dtype=torch.float32)
    head = ClassifierHead(HeadConfig(hidden_size=backbone.config.hidden_size, num_labels=3, dropout=0.1,
                                     type="mlp2-gelu"))
    model = PooledClassifier(backbone, head, "last").float().eval()
    for batch in random_batches(3, count=3, longest=160):
        expected = padded_logits(model, batch, backbone.config.pad_token_id or 0)
        torch.testing.assert_close(packed_logits(model, batch, backbone.config.pad_token_id or 0), expected,
                                   rtol=1e-4, atol=1e-4)


def test_pack_batch_layout():
    p = pack_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert p.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert p.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert p.cu_seqlens.tolist() == [0, 3, 4, 6] and p.cu_seqlens.dtype == torch.int32
    assert p.last_index.tolist() == [2, 3, 5] and (p.max_seqlen, p.n) == (3, 3)
    q = pack_batch([[5, 6, 7], [8]], pad_id=0, tokens=8, max_sequences=4, max_seqlen=16)
    assert q.input_ids.tolist() == [5, 6, 7, 8, 0, 0, 0, 0]
    assert q.cu_seqlens.tolist() == [0, 3, 4, 8, 8, 8]  # the tail is a sequence of its own; then empty slots
    assert q.last_index.tolist() == [2, 3, 0, 0] and q.max_seqlen == 16
    with pytest.raises(ValueError, match="does not fit"):
        pack_batch([[1] * 5] * 2, 0, tokens=8)
    with pytest.raises(ValueError, match="does not fit"):
        pack_batch([[1]] * 5, 0, max_sequences=4)
    with pytest.raises(ValueError, match="over max_seqlen 4"):
        pack_batch([[1] * 3], 0, tokens=8, max_seqlen=4)  # a tail of 5 pad tokens
    with pytest.raises(ValueError, match="at least one token"):
        pack_batch([[1], []], 0)


def reference_varlen(q, k, v, cu, max_seqlen, scale=None):
    """Attention sequence by sequence, the plain way (host loop): what every kernel must equal."""
    out = torch.zeros_like(q)
    bounds = cu.tolist()
    for s, e in zip(bounds, bounds[1:]):
        if e > s:
            out[s:e] = torch.nn.functional.scaled_dot_product_attention(
                q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), is_causal=True,
                scale=scale, enable_gqa=True).transpose(0, 1)
    return out


def test_cpu_varlen_kernel_equals_attention_per_sequence():
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 6, 6, 19, 30], dtype=torch.int32)
    q, k, v = torch.randn(30, 4, 16), torch.randn(30, 2, 16), torch.randn(30, 2, 16)
    torch.testing.assert_close(varlen_attention_repad(q, k, v, cu, 13), reference_varlen(q, k, v, cu, 13))
    torch.testing.assert_close(varlen_attention_repad(q, k, v, cu, 13, 0.3), reference_varlen(q, k, v, cu, 13, 0.3))


@torch.inference_mode()
def test_the_cuda_kernel_is_called_with_flash_varlen_arguments(monkeypatch):
    """On CPU, torch's varlen_attn (flash, CUDA only, half precision) is replaced by a stand-in that checks its
    documented contract ((T, H, D) layout, int32 boundaries for q and k, causal window, GQA flag) and computes
    attention sequence by sequence; the model's logits must be those of the CPU kernel (both in bfloat16)."""
    import torch.nn.attention.varlen as varlen

    calls = []

    def fake_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                         enable_gqa=False, **kwargs):
        assert query.dim() == 3 and key.shape[0] == query.shape[0] and cu_seq_q is cu_seq_k
        assert query.dtype == torch.bfloat16 and all(x.is_contiguous() for x in (query, key, value))
        assert cu_seq_q.dtype == torch.int32 and int(cu_seq_q[-1]) == query.shape[0]
        assert window_size == (-1, 0) and enable_gqa == (query.shape[1] != key.shape[1]) and max_q == max_k
        calls.append(max_q)
        return reference_varlen(query, key, value, cu_seq_q, max_q, scale)

    monkeypatch.setattr(varlen, "varlen_attn", fake_varlen_attn)
    model = tiny_classifier().to(torch.bfloat16)
    sizes = dict(max_sequences=16, max_seqlen=80)
    for batch in random_batches(2, count=3):
        expected = packed_logits(model, batch, tokens=sum(map(len, batch)) + 3, **sizes)
        monkeypatch.setitem(VARLEN_KERNELS, "cpu", VARLEN_KERNELS["cuda"])
        got = packed_logits(model, batch, tokens=sum(map(len, batch)) + 3, **sizes)
        monkeypatch.setitem(VARLEN_KERNELS, "cpu", varlen_attention_repad)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
    assert calls and set(calls) == {80}
    # float32 (which flash attention does not take) goes to the scatter-and-gather kernel, on any device
    q = torch.randn(7, 4, 16)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    torch.testing.assert_close(VARLEN_KERNELS["cuda"](q, q[:, :2], q[:, :2], cu, 4),
                               reference_varlen(q, q[:, :2], q[:, :2], cu, 4))
    assert len(calls) == 6

def test_served_passes_are_packed_and_the_metrics_show_no_padding_computed():
    """Through the app on CPU: unequal lengths run packed (computed == real tokens); the counters are exposed."""
    import asyncio

    from prometheus_client.parser import text_string_to_metric_families

    from service.settings import Settings

    from .conftest import serving

    async def go():
        settings = Settings(models={"cb": "tests/fixtures/export-v1-cb"}, dtype="float32", max_wait_ms=50)
        async with serving(settings) as client:
            response = await client.post("/classify", json={"model": "cb", "input": [
                "Passage: It rained all day and the streets were wet. Question: Was it dry?", "Yes?"]})
            return response, (await client.get("/metrics")).text

    response, text = asyncio.run(go())
    assert response.status_code == 200
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.labels.get("model") == "cb"}
    assert samples["dhrd_real_tokens_total"] == samples["dhrd_computed_tokens_total"] > 10
    assert "dhrd_padded_passes_total" not in samples and "dhrd_eager_passes_total" not in samples
