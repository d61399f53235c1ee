"""The CoT prompt around a classifier input (`CotPrompt`), from the base model's tokenizer only: what a
front-end process needs to turn a request into the ids the engine's generator decodes. No weights."""
from __future__ import annotations

from contract.encoding import load_tokenizer
from contract.manifest import Manifest
from contract.text import cot_instruction

from ..device.generator import base_model_path

# Stands in for the input while the prompt template is rendered once; never a real input.
_SLOT = "\x00DHRD-INPUT\x00"


class CotPrompt:
    """The CoT prompt around a classifier input, from the base model's tokenizer only (no weights):
    what a front-end process needs to turn a request into the ids the engine decodes."""

    def __init__(self, name: str, manifest: Manifest):
        path = base_model_path(name, manifest)
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "left"
        self.prefix, self.suffix = self._prompt_around_input(manifest)

    def _prompt_around_input(self, manifest: Manifest) -> tuple[list[int], list[int]]:
        """Token ids before and after the input in the CoT prompt (chat template when the model has one),
        tokenised once, so each request's input ids are reused as the classifier encoded them."""
        content = cot_instruction(_SLOT, manifest.label_words)
        chat = bool(getattr(self.tokenizer, "chat_template", None))
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True) if chat else content
        before, _, after = text.partition(_SLOT)
        # A rendered template spells its special tokens out (the tokenizer maps them back to their ids);
        # plain text gets the tokenizer's own special tokens, as the classifier's input does.
        prefix = self.tokenizer(before, add_special_tokens=not chat)["input_ids"]
        return prefix, self.tokenizer(after, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, input_ids: list[int]) -> list[int]:
        """The CoT prompt around one classifier input, given as the ids the classifier's tokenizer made
        (the export's tokenizer is the base model's); a leading BOS is dropped, the prefix has its own."""
        bos = self.tokenizer.bos_token_id
        body = input_ids[1:] if input_ids and bos is not None and input_ids[0] == bos else input_ids
        return self.prefix + list(body) + self.suffix
