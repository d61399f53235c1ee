"""The inference computation both sides share: padding, pooling (§3: last real input token), the head,
and `PooledClassifier` (backbone without LM head → pooled feature → head → logits)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .manifest import HEAD_TYPES, POOLING_MODES, HeadConfig

# The one map from the dtype names used in manifests, flags and settings to torch dtypes.
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


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


class ClassifierHead(nn.Module):
    """The pooled head, built from its manifest entry.

    "mlp2-gelu" (paper §3, after Gemma Encoder): Linear → GELU → dropout → Linear.
    "linear": one bias-free Linear, exactly HF's `*ForSequenceClassification.score`, so such a model
    can also be exported in the HF layout other servers load (our variant for peer comparisons).
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        if config.type not in HEAD_TYPES:
            raise ValueError(f"head type must be one of {HEAD_TYPES}, got {config.type!r}")
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        if config.type == "mlp2-gelu":
            self.dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.out = nn.Linear(config.hidden_size, config.num_labels)
        else:
            self.out = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.out.weight.dtype

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, K)
        if self.config.type == "linear":
            return self.out(self.dropout(pooled))
        return self.out(self.dropout(nn.functional.gelu(self.dense(pooled))))


def backbone_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, T, H) of a HF base model, with padding-independent positions."""
    out = backbone(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


def classify_logits(backbone: nn.Module, head: ClassifierHead, pooling: str, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """The inference computation, shared by training-side evaluation and the service: (B, T) → (B, K) float32."""
    hidden = backbone_hidden(backbone, input_ids, attention_mask)
    feature = pool(hidden, attention_mask, last_token_index(attention_mask), pooling)
    return head(feature.to(head.dtype)).float()


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

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The same, under the name `DualHeadModel` uses, so evaluation code takes either model."""
        return self.forward(input_ids, attention_mask)

    def forward_right_padded(self, input_ids: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        """The same logits for right-padded rows, without an attention mask (last-token pooling only).

        Under causal attention a real token never attends to the pad tokens after it, and right padding
        leaves positions 0..n-1 as they are, so the hidden state of the last real token is the masked
        forward's. Without a mask the computation has one shape per (batch, length) and no host-side
        checks: what a CUDA graph can capture. (B, T) ids and (B,) index of each row's last real token.
        """
        if self.pooling != "last":
            raise ValueError(f"the mask-free forward needs last-token pooling, not {self.pooling!r}")
        hidden = self.backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        feature = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]
        return self.head(feature.to(self.head.dtype)).float()
