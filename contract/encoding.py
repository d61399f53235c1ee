"""Input text → token ids, exactly as training and serving both must do it; the tokenizer's padding fallback."""
from __future__ import annotations

from pathlib import Path


def encode_input(tokenizer, text: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of one classifier input, and whether it was truncated.

    The input is tokenised on its own (never jointly with the rationale), so its tokens are
    identical at training and inference time. Over-long inputs lose their *beginning*: the
    pooled token is the last one, and every task puts its question at the end.
    """
    ids = token_ids(tokenizer, text)
    if len(ids) <= max_length:
        return ids, False
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos:  # keep the model's BOS when the tokenizer adds one
        return [bos] + ids[len(ids) - max_length + 1:], True
    return ids[len(ids) - max_length:], True


def token_ids(tokenizer, text: str) -> list[int]:
    """`tokenizer(text)["input_ids"]`, through the Rust tokenizer directly when there is one.

    The transformers wrapper costs ~100 µs of Python per call (a BatchEncoding, per-call truncation and
    padding settings), which is most of a front end's tokenising time. The backend gives the same ids
    when it has no truncation or padding configured of its own (then the wrapper's path is taken).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return backend.encode(text, add_special_tokens=True).ids
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def ensure_pad_token(tokenizer):
    """Give a tokenizer without a pad token the EOS token as one: padding is always masked, so any id
    will do, and every consumer must agree on it. Returns the tokenizer."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """A local tokenizer directory, with the padding fallback applied."""
    from transformers import AutoTokenizer

    return ensure_pad_token(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
