"""Shared fixtures: a tiny random llama (2 layers, 64-dim) with a small BPE tokenizer, built once per run."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"

CORPUS = [
    "Passage: Question: Answer: Is the answer correct Yes or No? Reasoning: Final Answer: Maybe",
    "The premise says the man went home. The hypothesis is entailed by the premise.",
    "Option 1: Option 2: Which option is more plausible, 1 or 2? What was the cause?",
    "Does the word have the same meaning in both sentences? Does the pronoun refer to",
]


def build_tiny_model(path: Path, tie: bool = True, seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer as a normal HF directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.exists():
        pytest.skip(f"shared data not found at {DATA_DIR}")
    return DATA_DIR


def write_rationales(path: Path, task_name: str, examples, text: str = "Because the text says so, clearly.") -> Path:
    """A rationale file in the shipped format, one row per example."""
    from contract.tasks import get_task

    task = get_task(task_name)
    with open(path, "w") as fh:
        for e in examples:
            fh.write(json.dumps({"key": e.key, "task": task.name, "split": "train", "label": task.labels[e.label],
                                 "rationale": f"{text} ({e.key})", "teacher": "test", "prompt_version": "test"}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_backbone, data_dir) -> Path:
    """`dhrd train` (2 steps) + `dhrd export --dtype float32` on the tiny random llama, task CB."""
    from training.cli import main
    from training.data import load_examples
    from contract.tasks import get_task

    root = tmp_path_factory.mktemp("export")
    rationales = write_rationales(root / "cb.jsonl", "cb", load_examples(get_task("cb"), "train", data_dir))
    assert main(["train", "--task", "cb", "--backbone", str(tiny_backbone), "--out", str(root / "run"),
                 "--rationales", str(rationales), "--max-steps", "2", "--train-limit", "8", "--eval-limit", "4",
                 "--batch-size", "4", "--grad-accum", "1", "--no-progress"]) == 0
    assert main(["export", str(root / "run"), "--out", str(root / "cb"), "--dtype", "float32",
                 "--verify-examples", "4"]) == 0
    return root / "cb"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep tests from writing into the user's cache, except the real base model (shared, read-mostly)."""
    monkeypatch.setenv("DHRD_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield


def python() -> str:
    return sys.executable


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
