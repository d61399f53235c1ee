"""Pooling, the single-pass property, and alpha = 0 as the pooled baseline."""
from __future__ import annotations

import pytest
import torch

from contract.manifest import HeadConfig
from contract.model import ClassifierHead, last_token_index, pad_batch, pool
from training.data import build_features, collate
from training.model import DualHeadModel, build_model
from contract.tasks import Example, get_task



def test_last_token_index_handles_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_mean_pooling_ignores_padding_and_tokens_after_pool_index():
    hidden = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    pooled = pool(hidden, mask, torch.tensor([2]), "mean")
    assert torch.allclose(pooled, hidden[0, :3].mean(0, keepdim=True))


@pytest.fixture()
def model(tiny_backbone):
    torch.manual_seed(0)
    m = build_model(tiny_backbone, num_labels=3, alpha=1.0)
    return m.eval()


@pytest.fixture()
def tokenizer(tiny_backbone):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_backbone)


def _examples():
    task = get_task("cb")
    fields = [{"premise": "The man went home after a long day at work.", "hypothesis": "The man went home."},
              {"premise": "It rained.", "hypothesis": "The street is dry."}]
    return task, [Example(f"cb/{i}", f, i % 3) for i, f in enumerate(fields)]


@pytest.mark.parametrize("side", ["right", "left"])
def test_single_pass_feature_equals_input_only_feature(model, tokenizer, side):
    """Logits at the last input token inside input+rationale+answer equal the inference logits."""
    task, examples = _examples()
    feats = [build_features(task, e, tokenizer, 256, rationale="A long rationale that follows the input. " * 3,
                            with_suffix=True) for e in examples]
    batch = collate(feats, tokenizer.pad_token_id, side=side, with_lm=True)
    with torch.no_grad():
        train_logits = model(**batch).cls_logits
        ids, mask = pad_batch([f.input_ids[: f.input_len] for f in feats], tokenizer.pad_token_id, side=side)
        infer_logits = model.classify(ids, mask)
    assert batch["input_ids"].shape[1] > ids.shape[1]  # the rationale really was in the sequence
    torch.testing.assert_close(train_logits, infer_logits, atol=1e-5, rtol=1e-4)


def test_left_and_right_padding_give_the_same_logits(model, tokenizer):
    task, examples = _examples()
    seqs = [build_features(task, e, tokenizer, 256).input_ids for e in examples]
    with torch.no_grad():
        right = model.classify(*pad_batch(seqs, tokenizer.pad_token_id, "right"))
        left = model.classify(*pad_batch(seqs, tokenizer.pad_token_id, "left"))
        alone = torch.cat([model.classify(*pad_batch([s], tokenizer.pad_token_id)) for s in seqs])
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)


def test_alpha_zero_is_the_pooled_baseline_and_never_runs_the_lm_head(model, tokenizer):
    task, examples = _examples()
    feats = [build_features(task, e, tokenizer, 256) for e in examples]
    batch = collate(feats, tokenizer.pad_token_id)
    calls = []
    model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    model.alpha = 0.0
    out = model(**batch)
    assert calls == []
    assert out.lm_loss is None
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.cls_logits, batch["cls_labels"]))


def test_loss_is_beta_ce_plus_alpha_lm(model, tokenizer):
    task, examples = _examples()
    feats = [build_features(task, e, tokenizer, 256, rationale="Because.", with_suffix=True) for e in examples]
    batch = collate(feats, tokenizer.pad_token_id, with_lm=True)
    model.alpha, model.beta = 0.5, 2.0
    with torch.no_grad():
        out = model(**batch)
    assert out.lm_loss is not None and out.lm_loss > 0
    torch.testing.assert_close(out.loss, 2.0 * out.cls_loss + 0.5 * out.lm_loss)


def test_lm_span_suffix_masks_the_input_tokens(tokenizer):
    task, examples = _examples()
    f = build_features(task, examples[0], tokenizer, 256, rationale="Because.", with_suffix=True, lm_span="suffix")
    batch = collate([f], tokenizer.pad_token_id, with_lm=True)
    labels = batch["lm_labels"][0]
    assert (labels[: f.input_len] == -100).all()
    assert (labels[f.input_len:] != -100).all()
    assert labels[-1].item() == tokenizer.eos_token_id


def test_invalid_loss_weights_are_rejected(tiny_backbone):
    with pytest.raises(ValueError, match="alpha"):
        DualHeadModel(torch.nn.Identity(), torch.nn.Identity(), ClassifierHead(HeadConfig(4, 2)), alpha=-1.0)
