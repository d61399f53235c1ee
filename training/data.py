"""Turning examples into token features and collating them into padded batches. Reading a task's splits
is the contract's (`contract.data`, torch-free, shared with the load tool); its names are re-exported here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from contract.data import (REPO_ROOT, default_data_dir, holdout_part, load_examples, read_flan_tsv,  # noqa: F401
                           read_jsonl, read_records, split_path, split_source)
from contract.encoding import encode_input
from contract.model import pad_batch
from contract.text import answer_text, reason_text
from contract.tasks import Example, Task, TaskError


@dataclass
class Features:
    """Token features of one training example.

    `input_len` tokens of classifier input, then (for α > 0) the suffix tokens; the pooled
    feature is read at `input_len - 1` (the last input token, §3).
    """

    input_ids: list[int]
    input_len: int
    label: int
    lm_start: int  # first token that counts in the LM loss (0 = whole sequence, as in the paper)
    truncated: bool = False


def build_features(task: Task, example: Example, tokenizer, max_length: int, rationale: str | None = None,
                   with_suffix: bool = False, lm_span: str = "all", max_rationale_tokens: int = 256) -> Features:
    """Tokenise one example: input alone, plus `Reasoning: r / Final Answer: y <eos>` when `with_suffix`.

    Args:
        lm_span: "all" (paper, Eq. 3: input + rationale + answer; TrainConfig's default too) or "suffix"
            (rationale + answer only).
    """
    if example.label is None:
        raise TaskError(f"{example.key}: has no label; unlabelled splits cannot be trained on")
    ids, truncated = encode_input(tokenizer, task.format(example.fields), max_length)
    input_len = len(ids)
    if with_suffix:
        word = task.label_words[example.label]
        # Tokenised piecewise so a long rationale is cut without ever losing the answer.
        reason = reason_text(rationale)
        reason_ids = tokenizer(reason, add_special_tokens=False)["input_ids"][:max_rationale_tokens] if reason else []
        answer_ids = tokenizer(answer_text(word), add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = ids + reason_ids + answer_ids + eos
    lm_start = 0 if lm_span == "all" else input_len
    return Features(ids, input_len, example.label, lm_start, truncated)


def collate(batch: Sequence[Features], pad_id: int, side: str = "right", with_lm: bool = False) -> dict[str, torch.Tensor]:
    """Pad features into tensors: `input_ids`, `attention_mask`, `pool_index`, `cls_labels` (+ `lm_labels`).

    `lm_labels` are the input ids with -100 on padding and on tokens before `lm_start`
    (the model shifts them by one internally).
    """
    input_ids, attention_mask = pad_batch([f.input_ids for f in batch], pad_id, side)
    T = input_ids.shape[1]
    offsets = [0 if side == "right" else T - len(f.input_ids) for f in batch]
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pool_index": torch.tensor([o + f.input_len - 1 for o, f in zip(offsets, batch)], dtype=torch.long),
        "cls_labels": torch.tensor([f.label for f in batch], dtype=torch.long),
    }
    if with_lm:
        lm_labels = input_ids.clone()
        lm_labels[attention_mask == 0] = -100
        for i, (o, f) in enumerate(zip(offsets, batch)):
            lm_labels[i, : o + f.lm_start] = -100
        out["lm_labels"] = lm_labels
    return out
