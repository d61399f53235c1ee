"""`DualHeadModel`: a decoder backbone with a pooled classification head and the LM (reasoning) head (§3).

Loss (Eq. 4): L = β·CE(pooled logits, label) + α·LM, where α weights the token-level LM loss
over `input, Reasoning: r, Final Answer: y` and β the classification loss. α = 0 is the pooled
baseline on the same code path and never touches the LM head.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from contract.manifest import HeadConfig
from contract.model import ClassifierHead, backbone_hidden, classify_logits, last_token_index, pool

from .lora import apply_lora

if TYPE_CHECKING:
    from .config import TrainConfig


@dataclass
class DualHeadOutput:
    cls_logits: torch.Tensor  # (B, K) float32
    loss: torch.Tensor | None = None
    cls_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None


class DualHeadModel(nn.Module):
    """Backbone + pooled classifier head (train and inference) + LM head (training only).

    Args:
        backbone: a HF base model (e.g. `LlamaModel`), returning `last_hidden_state`.
        lm_head: the causal LM's output projection (often tied to the input embedding).
        head: the pooled `ClassifierHead`.
        alpha: weight of the LM loss; beta: weight of the classification loss.
    """

    def __init__(self, backbone: nn.Module, lm_head: nn.Module, head: ClassifierHead, pooling: str = "last",
                 alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"alpha and beta must be >= 0 and not both 0, got alpha={alpha}, beta={beta}")
        self.backbone = backbone
        self.lm_head = lm_head
        self.head = head
        self.pooling = pooling
        self.alpha = alpha
        self.beta = beta

    def classify(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Inference path on inputs alone: exactly what `contract.PooledClassifier` computes."""
        return classify_logits(self.backbone, self.head, self.pooling, input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_index: torch.Tensor | None = None,
                cls_labels: torch.Tensor | None = None, lm_labels: torch.Tensor | None = None) -> DualHeadOutput:
        """One pass serves both losses: with causal attention the state at `pool_index` (last input
        token) cannot see the rationale that follows it, so it equals the inference-time feature.

        Args:
            input_ids, attention_mask: (B, T); T covers input + rationale + answer when lm_labels is given.
            pool_index: (B,) last input token; defaults to the last real token.
            cls_labels: (B,) class indices. lm_labels: (B, T) token ids with -100 where no loss applies.
        """
        hidden = backbone_hidden(self.backbone, input_ids, attention_mask)  # (B, T, H)
        if pool_index is None:
            pool_index = last_token_index(attention_mask)
        feature = pool(hidden, attention_mask, pool_index, self.pooling)  # (B, H)
        logits = self.head(feature.to(self.head.dtype)).float()  # (B, K)
        out = DualHeadOutput(cls_logits=logits)
        if cls_labels is None:
            return out
        out.cls_loss = F.cross_entropy(logits, cls_labels)
        out.loss = self.beta * out.cls_loss
        if self.alpha > 0 and lm_labels is not None:
            out.lm_loss = self._lm_loss(hidden, lm_labels)
            out.loss = out.loss + self.alpha * out.lm_loss
        return out

    def _lm_loss(self, hidden: torch.Tensor, lm_labels: torch.Tensor) -> torch.Tensor:
        """Causal next-token CE (Eq. 3), projecting only the positions that have a target.

        Projecting every position to a 49k vocabulary would dominate memory on small models;
        selecting first gives the same mean.
        """
        targets = lm_labels[:, 1:]  # (B, T-1)
        keep = targets != -100
        states = hidden[:, :-1][keep]  # (N, H)
        if states.shape[0] == 0:
            return hidden.sum() * 0.0
        logits = self.lm_head(states)  # (N, V)
        return F.cross_entropy(logits.float(), targets[keep])


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """A local HF causal-LM directory as (backbone, lm_head, config), on CPU."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"backbone {path} is not a Hugging Face model directory (no config.json)")
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    backbone = lm.base_model
    if backbone is lm:
        raise ValueError(f"backbone {path}: {type(lm).__name__} exposes no separate base model")
    return backbone, lm.get_output_embeddings(), lm.config


def build_model(backbone_path: str | Path, num_labels: int, pooling: str = "last", alpha: float = 1.0,
                beta: float = 1.0, head_dropout: float = 0.1, trust_remote_code: bool = False,
                head_type: str = "mlp2-gelu") -> DualHeadModel:
    backbone, lm_head, config = load_causal_lm(backbone_path, trust_remote_code=trust_remote_code)
    head = ClassifierHead(HeadConfig(config.hidden_size, num_labels, head_dropout, head_type))
    return DualHeadModel(backbone, lm_head, head, pooling, alpha, beta)


def is_tied(model: DualHeadModel) -> bool:
    embed = model.backbone.get_input_embeddings()
    return embed is not None and model.lm_head.weight is embed.weight


# Building the model a TrainConfig describes lives here, beside `build_model`, rather than in the recipe
# or the run directory: a fresh run (loop.py) and a reloaded one (run_dir.py) must build exactly the
# same module tree for checkpoints to fit, and that is a fact about the model, not about either caller.
def make_model(cfg: TrainConfig, num_labels: int, backbone_path: Path) -> DualHeadModel:
    """The backbone with head, LoRA (or all weights) trainable as `cfg` says."""
    model = build_model(backbone_path, num_labels, cfg.pooling, cfg.alpha, cfg.beta, cfg.head_dropout,
                        cfg.trust_remote_code, cfg.head)
    if cfg.lora:
        model.backbone = apply_lora(model.backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                    [t.strip() for t in cfg.lora_targets.split(",") if t.strip()])
    elif not is_tied(model):
        # An untied LM head is not exported and, with alpha = 0, never used: keep it frozen.
        model.lm_head.requires_grad_(cfg.alpha > 0)
    return model
