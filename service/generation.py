"""What a chain-of-thought generation asks for and gives back: plain values that every room passes along
(the HTTP edge builds `GenParams`, the engine wraps prompt ids in `CotItem`, the device returns
`CotResult`). No torch, no HTTP."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenParams:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int | None
    min_new_tokens: int = 0


@dataclass
class CotItem:
    """One sequence to decode; `len()` is its prompt length so the batcher can budget tokens."""

    ids: list[int]
    params: GenParams

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class CotResult:
    label: int | None  # index into the manifest's labels; None when the text names no answer
    text: str
    generated_tokens: int
