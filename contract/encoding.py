"""Input text → token ids, exactly as training and serving both must do it; the tokenizer's padding fallback."""
from __future__ import annotations

import re
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
    return _keep_end(tokenizer, ids, max_length), True


def _keep_end(tokenizer, ids: list[int], max_length: int) -> list[int]:
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos:  # keep the model's BOS when the tokenizer adds one
        return [bos] + ids[len(ids) - max_length + 1:]
    return ids[len(ids) - max_length:]


# `encode_bounded` first tokenises only the text's end: this many characters per token kept (most text
# runs 3-5), plus BOUNDARY_TOKENS, widened 4x while the end holds too few tokens (runs of long tokens).
CHARS_PER_TOKEN_GUESS = 8
BOUNDARY_TOKENS = 64
_WORD_START = re.compile(r"\s(?=\S)")  # the last whitespace before a word: where pre-tokenizers split
_BOUNDARY_SCAN = 4096  # characters searched for such a place past the window's start


def encode_bounded(tokenizer, text: str, max_length: int) -> tuple[list[int], bool, int | None]:
    """`encode_input` with work bounded by `max_length`, not by the text: what a server does with input
    a client controls (tokenising a 1.9 MB input whole took ~1 s). Returns the ids, whether they were
    truncated, and the whole text's token count (None when only its end was tokenised).

    A text longer than a window is tokenised from a word boundary inside its last window of characters;
    when that end alone holds more than `max_length + BOUNDARY_TOKENS` tokens, the whole text holds more
    than `max_length`, and its last `max_length` tokens are the end's: pre-tokenizers (byte-level BPE's
    regex, whitespace splitting) never merge across that boundary, so the ids are those `encode_input`
    gives (`tests/service/test_reliability.py` checks this on the real tokenizer). Only an end with no
    word boundary at all (one huge "word") is cut mid-word, where merges near the cut may differ (our
    inference; it is far from the kept tokens unless the word is longer than them).
    """
    window = CHARS_PER_TOKEN_GUESS * (max_length + BOUNDARY_TOKENS)
    while window < len(text):
        start = len(text) - window
        boundary = _WORD_START.search(text, start, min(len(text), start + _BOUNDARY_SCAN))
        ids = token_ids(tokenizer, text[boundary.start() if boundary else start:])
        if len(ids) > max_length + BOUNDARY_TOKENS:
            return _keep_end(tokenizer, ids, max_length), True, None
        window *= 4
    ids = token_ids(tokenizer, text)
    if len(ids) <= max_length:
        return ids, False, len(ids)
    return _keep_end(tokenizer, ids, max_length), True, len(ids)


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
