"""The inference computation both sides share: padding and packing, pooling (§3: last real input token), the
head, and `PooledClassifier` (backbone without LM head → pooled feature → head → logits)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .manifest import HEAD_TYPES, POOLING_MODES, HeadConfig

# The one map from the dtype names used in manifests, flags and settings to torch dtypes.
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def native_bf16(device: str) -> bool:
    """Whether bf16 matmuls run in hardware on `device`. A CPU without AVX-512 BF16 or AMX has PyTorch
    emulate them, about 100x slower than fp32 (0.9 against 122 GFLOP/s on an AVX2-only EPYC VM, 1024²
    matmuls), so serving bf16 there would be a trap."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:  # oneDNN's own answer: AVX-512 BF16 or AMX present
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without that probe: read the CPU's flags (Linux)
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                flags = fh.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: str) -> str:
    """A dtype setting as a concrete dtype name: "auto" is bfloat16 where it runs natively, else float32."""
    if name == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {name!r}")
    return name


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


# --- packing: a batch as one flat token stream -----------------------------------------------------------
# TEI's varlen attention and vLLM V1's flat token batches: the sequences are concatenated, positions restart
# at 0 in each, attention stays within each sequence, and the head reads each sequence's last token. No
# linear layer sees a padding token. The name under which the attention is registered with transformers.
PACKED_ATTENTION = "dhrd_varlen"


@dataclass
class Packed:
    """A batch of `n` sequences packed into one stream of `input_ids.shape[0]` tokens.

    Attributes:
        input_ids: (N,) the sequences back to back, then any tail of pad tokens up to a fixed N.
        position_ids: (N,) 0..len-1 within each sequence (0 in the tail).
        cu_seqlens: (S+1,) int32 boundaries: sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]. A padded tail
            is one more sequence of its own; slots past it have length 0. S ≥ n.
        last_index: (B,) the last token of each of the n sequences; B ≥ n (rows past n read token 0).
        max_seqlen: longest sequence (or an upper bound on it): the attention kernels size their work by it.
        n: how many real sequences.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    last_index: torch.Tensor
    max_seqlen: int
    n: int


def pack_batch(sequences: Sequence[Sequence[int]], pad_id: int, tokens: int | None = None,
               max_sequences: int | None = None, max_seqlen: int | None = None) -> Packed:
    """Pack token id lists into one stream (host tensors), optionally padded to fixed sizes.

    Args:
        sequences: the batch; none may be empty.
        pad_id: the id of tail tokens (they form a sequence of their own, so they touch nothing real).
        tokens: pad the stream to this many tokens (a CUDA graph bucket); default: exactly the real tokens.
        max_sequences: size `last_index` to this many rows and `cu_seqlens` to max_sequences + 2 entries (room
            for the tail), so every batch of a bucket has the same shapes; default: exactly the batch.
        max_seqlen: the bound to record (a captured graph's); default: the longest sequence.
    Raises:
        ValueError naming the batch's size when it does not fit `tokens` or `max_sequences`.
    """
    lengths = [len(s) for s in sequences]
    if not lengths or min(lengths) < 1:
        raise ValueError(f"every sequence needs at least one token, got lengths {lengths[:8]}")
    real, n = sum(lengths), len(lengths)
    tokens = real if tokens is None else tokens
    if real > tokens or (max_sequences is not None and n > max_sequences):
        raise ValueError(f"a batch of {n} sequences and {real} tokens does not fit {max_sequences} sequences "
                         f"and {tokens} tokens")
    longest = max(lengths)
    if max_seqlen is not None and max(longest, tokens - real) > max_seqlen:
        raise ValueError(f"a sequence of {max(longest, tokens - real)} tokens (the pad tail counts) is over "
                         f"max_seqlen {max_seqlen}")
    ids = torch.full((tokens,), pad_id, dtype=torch.long)
    ids[:real] = torch.as_tensor([t for s in sequences for t in s], dtype=torch.long)
    positions = torch.zeros(tokens, dtype=torch.long)
    positions[:real] = torch.cat([torch.arange(k) for k in lengths])
    ends = torch.tensor(lengths).cumsum(0)
    bounds = [0] + ends.tolist() + ([tokens] if tokens > real else [])
    slots = len(bounds) if max_sequences is None else max_sequences + 2
    cu = torch.tensor(bounds + [bounds[-1]] * (slots - len(bounds)), dtype=torch.int32)  # (S+1,)
    last = torch.zeros(n if max_sequences is None else max_sequences, dtype=torch.long)
    last[:n] = ends - 1
    return Packed(ids, positions, cu, last, longest if max_seqlen is None else max_seqlen, n)


def varlen_attention_repad(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence, the CPU kernel: the rows are scattered into a right-padded
    (S, max_seqlen) block, SDPA runs with `is_causal` (no mask: a real query never sees the zero rows after
    it), and the rows are gathered back. The projections and the MLP around it stay packed; only attention
    pays for padding, as the padded forward does. No host sync and static shapes (given max_seqlen).

    Chosen over a dense (N, N) block-diagonal mask (what transformers builds from packed position_ids: N²
    work and memory) and a per-sequence loop (one call per sequence and layer, host-read boundaries);
    `python -m loadtest.forward attention` measures the three (BENCHMARKS.md, "Packed forward passes").

    Args:
        query: (N, Hq, D); key, value: (N, Hkv, D) with Hq a multiple of Hkv.
        cu_seqlens: (S+1,) boundaries; cu_seqlens[-1] == N.
    Returns:
        (N, Hq, D).
    """
    n, device = query.shape[0], query.device
    slots = cu_seqlens.shape[0] - 1
    cu = cu_seqlens.long()
    token = torch.arange(n, device=device)
    seq = torch.searchsorted(cu[1:], token, right=True)  # (N,) the sequence each token belongs to
    offset = token - cu[seq]  # (N,) its position within it

    def padded(x: torch.Tensor) -> torch.Tensor:  # (N, H, D) -> (S, H, T, D)
        block = x.new_zeros(slots, max_seqlen, x.shape[1], x.shape[2])
        block[seq, offset] = x
        return block.transpose(1, 2)

    out = nn.functional.scaled_dot_product_attention(padded(query), padded(key), padded(value), is_causal=True,
                                                     scale=scale, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2)[seq, offset]  # (N, Hq, D)


def varlen_attention_cuda(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                          max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence on a GPU: flash attention's varlen kernel (torch ≥ 2.10,
    half precision), no mask and no host sync. Same arguments as `varlen_attention_repad`, whose scatter and
    gather (any device) serves float32, which flash attention does not take."""
    if query.dtype not in (torch.float16, torch.bfloat16):
        return varlen_attention_repad(query, key, value, cu_seqlens, max_seqlen, scale)
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn(query.contiguous(), key.contiguous(), value.contiguous(), cu_seqlens, cu_seqlens, max_seqlen,
                       max_seqlen, scale=scale, window_size=(-1, 0), enable_gqa=query.shape[1] != key.shape[1])


# Device type -> varlen attention kernel. Tests substitute entries (a CPU stand-in for the CUDA kernel).
VARLEN_KERNELS = {"cpu": varlen_attention_repad, "cuda": varlen_attention_cuda}


def packed_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             cu_seq_lens_q: torch.Tensor | None = None, max_length_q: int | None = None,
                             sliding_window: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface over a packed stream: (1, H, N, D) in, (1, N, H, D) out.

    Registered under PACKED_ATTENTION and not as a mask function, so transformers builds no mask and does not
    inspect position_ids for packing (which would read a device value on the host) before calling it.
    """
    if cu_seq_lens_q is None or max_length_q is None:
        raise ValueError(f"{PACKED_ATTENTION} attention needs cu_seq_lens_q and max_length_q (a packed batch)")
    if attention_mask is not None:
        raise ValueError(f"{PACKED_ATTENTION} attention takes no attention mask, got shape {tuple(attention_mask.shape)}")
    if sliding_window is not None and sliding_window < max_length_q:
        raise ValueError(f"sliding window {sliding_window} < max_seqlen {max_length_q}: not supported packed")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (N, H, D)
    out = VARLEN_KERNELS[q.device.type](q, k, v, cu_seq_lens_q, max_length_q, scaling)
    return out[None], None  # (1, N, Hq, D)


@contextmanager
def packed_attention(backbone: nn.Module):
    """Run `backbone` with the packed attention function for the duration (its config is shared by every
    layer); restored afterwards. Not thread-safe: one thread runs a model's forward passes (service/engine.py)."""
    from transformers import AttentionInterface

    if PACKED_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    config = backbone.config
    before = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def pool_packed(hidden: torch.Tensor, cu_seqlens: torch.Tensor, last_index: torch.Tensor, mode: str = "last") -> torch.Tensor:
    """`pool` for a packed stream: (N, H) hidden states → (B, H), B = last_index rows.

    "last" reads each sequence's last token; "mean" averages each sequence's tokens (at inference the whole
    sequence is input, so this is `pool`'s mean up to pool_index).
    """
    if mode == "last":
        return hidden[last_index]
    if mode == "mean":
        cu = cu_seqlens.long()
        token = torch.arange(hidden.shape[0], device=hidden.device)
        seq = torch.searchsorted(cu[1:], token, right=True)
        sums = hidden.new_zeros(cu.shape[0] - 1, hidden.shape[1]).index_add_(0, seq, hidden)
        counts = (cu[1:] - cu[:-1]).clamp(min=1).to(hidden.dtype)
        return (sums / counts[:, None])[:last_index.shape[0]]
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

    def forward_packed(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                       last_index: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """The same logits from a packed batch (`pack_batch`): no padding token reaches a linear layer, and no
        mask or host sync is involved (what a CUDA graph can capture, given fixed-size inputs).

        Args:
            input_ids, position_ids: (N,); cu_seqlens: (S+1,) int32; last_index: (B,); max_seqlen: see `Packed`.
        Returns:
            (B, K) float32 logits; rows past the batch's real sequences are meaningless.
        """
        with packed_attention(self.backbone):
            hidden = self.backbone(input_ids=input_ids[None], position_ids=position_ids[None], use_cache=False,
                                   cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=max_seqlen,
                                   max_length_k=max_seqlen).last_hidden_state[0]  # (N, H)
        feature = pool_packed(hidden, cu_seqlens, last_index, self.pooling)
        return self.head(feature.to(self.head.dtype)).float()
