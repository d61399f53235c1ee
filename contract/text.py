"""The text conventions around a classifier input: the training-only suffix, answer parsing, the CoT prompt."""
from __future__ import annotations

import re
from typing import Sequence

# Training-only suffix (§E.2); plain-text headers, not new special tokens (our reading of §3).
REASON_HEADER = "\nReasoning:\n"
ANSWER_HEADER = "\nFinal Answer:\n"

# The chain-of-thought comparison prompt (`POST /classify/cot`). Its tag is recorded in responses'
# model cards; the teacher prompts of `training.rationales` carry tags of their own.
COT_ENDPOINT_PROMPT_VERSION = "cot-endpoint-v1"
COT_ENDPOINT_INSTRUCTION = ("{input}\n\nThink step by step in a few sentences, then give your final answer on the "
                            "last line as 'Final Answer: X', where X is one of: {choices}.")


def reason_text(rationale: str | None) -> str:
    """`Reasoning: r` part of the training suffix; empty without a rationale (the OnlyLabel ablation)."""
    return f"{REASON_HEADER}{rationale.strip()}" if rationale and rationale.strip() else ""


def answer_text(label_word: str) -> str:
    """`Final Answer: y` part of the training suffix (Eq. 1)."""
    return f"{ANSWER_HEADER}{label_word}"


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


def cot_instruction(input_text: str, label_words: Sequence[str]) -> str:
    """The user message of the CoT comparison prompt around one classifier input."""
    return COT_ENDPOINT_INSTRUCTION.format(input=input_text, choices=", ".join(label_words))
