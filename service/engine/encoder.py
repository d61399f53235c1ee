"""Request items → token ids: an export's task, template and tokenizer, and no weights. A front-end
process holds only this and sends the ids to the engine; in one process the engine builds it beside
the model runner from the same export. Synchronous; no asyncio, no HTTP, no device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.encoding import encode_bounded, load_tokenizer
from contract.export_reader import check_export
from contract.tasks import TaskError
from contract.tasks.base import text_problem

from ..errors import InvalidInput


@dataclass
class Encoded:
    ids: list[int]
    truncated: bool


class InputEncoder:
    """An export's task, template and tokenizer: request items → token ids. No weights: a front-end
    process holds only this, and sends the ids to the engine."""

    def __init__(self, manifest, task, tokenizer):
        self.manifest = manifest
        self.task = task
        self.tokenizer = tokenizer

    @classmethod
    def from_export(cls, path: Path, verify_hashes: bool = False) -> "InputEncoder":
        manifest, task = check_export(Path(path), verify_hashes)
        return cls(manifest, task, load_tokenizer(path))

    def format(self, item: str | dict[str, Any], index: int) -> str:
        """Pre-formatted text passes through; a fields object is checked against the task's declaration
        and formatted by its template. Raises InvalidInput naming `input.<index>[.<field>]`."""
        if isinstance(item, str):
            problem = "is empty" if not item.strip() else text_problem(item)
            if problem:
                raise InvalidInput(f"input[{index}] {problem}", field=f"input.{index}")
            return item
        try:
            self.task.check_fields(item)
            return self.task.format(item)
        except TaskError as exc:
            where = f"input.{index}" + (f".{exc.field}" if exc.field else "")
            raise InvalidInput(f"input[{index}] (task {self.task.name!r}): {exc}", field=where) from exc
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a template's own check
            raise InvalidInput(f"input[{index}] (task {self.task.name!r}): {exc}", field=f"input.{index}") from exc

    def encode(self, item: str | dict[str, Any], index: int, truncate: bool, limit: int | None = None) -> Encoded:
        """Token ids of one request item; raises InvalidInput naming the item."""
        text = self.format(item, index)
        max_length = min(limit or self.manifest.max_length, self.manifest.max_length)
        # Bounded by max_length, not by the text (a 1.9 MB input must not cost a second of tokenising),
        # and tokenised once: a refusal below reuses the count when the whole text was tokenised.
        ids, truncated, count = encode_bounded(self.tokenizer, text, max_length)
        if truncated and not truncate:
            size = f"{count} tokens" if count is not None else f"more than {max_length} tokens ({len(text)} characters)"
            raise InvalidInput(f"input[{index}] has {size}, over the model's limit of {max_length}; "
                               "send truncate=true to cut its beginning", field=f"input.{index}")
        return Encoded(ids, truncated)
