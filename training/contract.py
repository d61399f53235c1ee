"""The contract between training and serving: task text, label maps, tokenisation, pooling, head, export layout.

Training (`training.model`) and serving (`service.runner`) both import this module and nothing
else of each other, so the features a classifier was trained on are the features it is served on.
Any change to what this module computes must bump CONTRACT_VERSION; exports record it and the
service refuses an export whose contract major version differs.

Deliberately light: torch only, no transformers/peft at import time.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .tasks import Task, TaskError, get_task, task_from_spec

CONTRACT_VERSION = "1.1"  # 1.1: optional bias-free linear head (HeadConfig.type "linear")
EXPORT_FORMAT_VERSION = 1

# Export directory layout.
WEIGHTS_FILE = "model.safetensors"  # backbone (no LM head) under "backbone.", head under "head."
MANIFEST_FILE = "manifest.json"
MODEL_CARD_FILE = "README.md"
BACKBONE_PREFIX = "backbone."
HEAD_PREFIX = "head."

# Training-only suffix (§E.2); plain-text headers, not new special tokens (our reading of §3).
REASON_HEADER = "\nReasoning:\n"
ANSWER_HEADER = "\nFinal Answer:\n"

POOLING_MODES = ("last", "mean")


def reason_text(rationale: str | None) -> str:
    """`Reasoning: r` part of the training suffix; empty without a rationale (the OnlyLabel ablation)."""
    return f"{REASON_HEADER}{rationale.strip()}" if rationale and rationale.strip() else ""


def answer_text(label_word: str) -> str:
    return f"{ANSWER_HEADER}{label_word}"


def training_suffix(rationale: str | None, label_word: str) -> str:
    """Text the reasoning head learns after the input: `Reasoning: r  Final Answer: y` (Eq. 1)."""
    return reason_text(rationale) + answer_text(label_word)


def parse_answer(text: str, label_words: Sequence[str]) -> int | None:
    """Index of the label the generated text settles on: the last `Final Answer: X`, else the last
    label word mentioned. None when neither appears."""
    lowered = [w.lower() for w in label_words]
    finals = re.findall(r"final answer\s*[:：]?\s*\**\s*([A-Za-z0-9_]+)", text, flags=re.IGNORECASE)
    for word in reversed(finals):
        if word.lower() in lowered:
            return lowered.index(word.lower())
    hits = [(m.start(), lowered.index(m.group(0).lower())) for w in lowered
            for m in re.finditer(rf"\b{re.escape(w)}\b", text, flags=re.IGNORECASE)]
    return max(hits)[1] if hits else None


def encode_input(tokenizer, text: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of one classifier input, and whether it was truncated.

    The input is tokenised on its own (never jointly with the rationale), so its tokens are
    identical at training and inference time. Over-long inputs lose their *beginning*: the
    pooled token is the last one, and every task puts its question at the end.
    """
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_length:
        return ids, False
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos:  # keep the model's BOS when the tokenizer adds one
        return [bos] + ids[len(ids) - max_length + 1:], True
    return ids[len(ids) - max_length:], True


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding.

    Args:
        attention_mask: (B, T) of 0/1.
    Returns:
        (B,) long tensor.
    """
    T = attention_mask.shape[-1]
    return T - 1 - attention_mask.flip(-1).long().argmax(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left padding does not shift RoPE positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pool_index: torch.Tensor, mode: str = "last") -> torch.Tensor:
    """Pool hidden states into one feature per row (§3: last real input token).

    Args:
        hidden: (B, T, H) final hidden states.
        attention_mask: (B, T) 0/1.
        pool_index: (B,) index of the last *input* token; at training time rationale tokens follow it.
        mode: "last" (paper) or "mean" (mean over real input tokens up to pool_index).
    Returns:
        (B, H).
    """
    if mode == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pool_index]
    if mode == "mean":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        mask = (attention_mask.bool() & (positions[None, :] <= pool_index[:, None])).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")


HEAD_TYPES = ("mlp2-gelu", "linear")


class ClassifierHead(nn.Module):
    """The pooled head. "mlp2-gelu" (paper §3, after Gemma Encoder): Linear → GELU → dropout → Linear.
    "linear": one bias-free Linear, exactly HF's `*ForSequenceClassification.score`, so such a model
    can also be exported in the HF layout other servers load (our variant for peer comparisons)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, kind: str = "mlp2-gelu"):
        super().__init__()
        if kind not in HEAD_TYPES:
            raise ValueError(f"head type must be one of {HEAD_TYPES}, got {kind!r}")
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        if kind == "mlp2-gelu":
            self.dense = nn.Linear(hidden_size, hidden_size)
            self.out = nn.Linear(hidden_size, num_labels)
        else:
            self.out = nn.Linear(hidden_size, num_labels, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.out.weight.dtype

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, K)
        if self.kind == "linear":
            return self.out(self.dropout(pooled))
        return self.out(self.dropout(nn.functional.gelu(self.dense(pooled))))


class PooledClassifier(nn.Module):
    """Inference model: backbone (no LM head) → pooled feature → head → logits.

    Training wraps the same computation (`training.model.DualHeadModel.classify`); serving uses this.
    """

    def __init__(self, backbone: nn.Module, head: ClassifierHead, pooling: str = "last"):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask → (B, K) float32 logits."""
        return classify_logits(self.backbone, self.head, self.pooling, input_ids, attention_mask)


def classify_logits(backbone: nn.Module, head: ClassifierHead, pooling: str, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """The inference computation, shared by training-side evaluation and the service: (B, T) → (B, K)."""
    hidden = backbone_hidden(backbone, input_ids, attention_mask)
    feature = pool(hidden, attention_mask, last_token_index(attention_mask), pooling)
    return head(feature.to(head.dtype)).float()


def backbone_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, H) of a HF base model, with padding-independent positions."""
    out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into (B, T) `input_ids` and `attention_mask`."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for i, seq in enumerate(sequences):
        sl = slice(0, len(seq)) if side == "right" else slice(T - len(seq), T)
        ids[i, sl] = torch.tensor(seq, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


@dataclass
class HeadConfig:
    hidden_size: int
    num_labels: int
    dropout: float = 0.1
    type: str = "mlp2-gelu"


@dataclass
class Manifest:
    """What an export directory promises; written as manifest.json, validated by the service."""

    task: str
    labels: list[str]
    label_words: list[str]
    pooling: str
    max_length: int
    head: HeadConfig
    base_model: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    dtype: str = "bfloat16"
    task_spec: dict[str, Any] | None = None  # custom tasks only
    truncation: str = "left"
    format_version: int = EXPORT_FORMAT_VERSION
    contract_version: str = CONTRACT_VERSION
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        data = dict(data)
        fmt = data.get("format_version")
        if fmt != EXPORT_FORMAT_VERSION:
            raise ValueError(f"export format_version {fmt!r} is not supported (this build reads {EXPORT_FORMAT_VERSION})")
        contract = str(data.get("contract_version", ""))
        if contract.split(".")[0] != CONTRACT_VERSION.split(".")[0]:
            raise ValueError(f"export contract_version {contract!r} is incompatible with {CONTRACT_VERSION!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"manifest has unknown key(s) {sorted(unknown)}")
        try:
            data["head"] = HeadConfig(**data["head"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"manifest is missing or has a malformed field: {exc}") from exc

    def task_object(self) -> Task:
        return task_from_spec(self.task_spec) if self.task_spec else get_task(self.task)


__all__ = [
    "ANSWER_HEADER", "BACKBONE_PREFIX", "CONTRACT_VERSION", "ClassifierHead", "EXPORT_FORMAT_VERSION",
    "HEAD_PREFIX", "HEAD_TYPES", "HeadConfig", "MANIFEST_FILE", "MODEL_CARD_FILE", "Manifest", "POOLING_MODES",
    "PooledClassifier", "REASON_HEADER", "classify_logits", "Task", "answer_text", "reason_text", "TaskError", "WEIGHTS_FILE", "backbone_hidden",
    "encode_input", "get_task", "parse_answer", "last_token_index", "pad_batch", "pool", "position_ids_from_mask",
    "training_suffix",
]
