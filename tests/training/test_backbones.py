"""Any local HF decoder-only causal LM works as backbone: tiny random llama, qwen2, qwen3, mistral, gemma."""
from __future__ import annotations

import pytest
import torch

from contract.model import pad_batch
from training.data import build_features, collate
from training.export import export_state
from training.model import build_model
from contract.tasks import Example, get_task

FAMILIES = ["qwen2", "qwen3", "mistral", "gemma"]


def tiny_family(path, family: str):
    """Tiny random causal LM of `family` with the tiny BPE tokenizer of conftest."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..conftest import build_tiny_model

    build_tiny_model(path)  # writes the tokenizer (and a llama we overwrite)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=2,
                                  bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return tokenizer


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_single_pass_and_round_trips_through_the_service_loader(family, tmp_path):
    from transformers import AutoConfig, AutoModel

    from contract.model import ClassifierHead, PooledClassifier

    tokenizer = tiny_family(tmp_path, family)
    model = build_model(tmp_path, num_labels=3).eval()
    assert type(model.backbone).__name__.lower().startswith(family)
    task = get_task("cb")
    examples = [Example("cb/0", {"premise": "It rained all day long.", "hypothesis": "It was wet."}, 0),
                Example("cb/1", {"premise": "No.", "hypothesis": "Yes."}, 1)]
    feats = [build_features(task, e, tokenizer, 128, rationale="Because rain makes things wet.", with_suffix=True)
             for e in examples]
    batch = collate(feats, tokenizer.pad_token_id, side="left", with_lm=True)
    with torch.no_grad():
        out = model(**batch)
        alone = model.classify(*pad_batch([f.input_ids[: f.input_len] for f in feats], tokenizer.pad_token_id))
    assert out.lm_loss is not None and torch.isfinite(out.loss)
    torch.testing.assert_close(out.cls_logits, alone, atol=1e-4, rtol=1e-4)

    # what the service builds from config.json + the exported tensors computes the same logits
    state = export_state(model.backbone, model.head, torch.float32)
    assert not any("lm_head" in k for k in state)
    served = PooledClassifier(AutoModel.from_config(AutoConfig.from_pretrained(tmp_path)), ClassifierHead(
        model.head.config), "last")
    served.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(served.eval()(*pad_batch([f.input_ids[: f.input_len] for f in feats],
                                                            tokenizer.pad_token_id)), alone, atol=1e-5, rtol=1e-5)
