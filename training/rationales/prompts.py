"""What a teacher is asked: the system prompt, the label-conditioned (paper) and CoT prompts, and their tags."""
from __future__ import annotations

from dataclasses import dataclass

from contract.tasks import Example, Task

# Tags recorded in every row's `prompt_version`; committed rationale files carry them, so a prompt
# whose wording changes gets a new tag and these stay as they are.
PROMPT_VERSION = "label-v1"
COT_PROMPT_VERSION = "cot-v1"  # the teacher's CoT prompt; the service's /classify/cot prompt has its own tag
# The paper's teacher (§E.3) sees the gold label and writes 2-5 sentences that justify it without
# restating it, ending with the sentinel, then `Answer: ...` (which cleaning cuts off).
SENTINEL = "[END OF REASONING]"
SYSTEM_PROMPT = "You are a careful teacher who explains the reasoning behind answers to reading-comprehension questions."
LABEL_PROMPT = (
    "{input}\n\nThe correct answer is: {answer}\n\n"
    "In 2 to 4 short sentences, explain why this answer is correct, using facts from the text. "
    "Do not write the answer word itself. End with " + SENTINEL + "."
)
# Unconditioned chain of thought: the teacher does not see the label; only rationales whose parsed
# answer agrees with the gold label are kept.
COT_PROMPT = (
    "{input}\n\nThink step by step in 2 to 4 short sentences, then write the final answer on the last line "
    "as 'Final Answer: X', where X is one of: {choices}."
)


@dataclass
class Request:
    """One prompt for one example, with what judging its completion needs."""

    key: str
    prompt: str  # user message
    label_word: str
    gold: int
    label_words: tuple[str, ...] = ()  # set in CoT mode: the answer is parsed and must equal `gold`


def label_prompt(task: Task, example: Example) -> Request:
    """The paper's prompt: the teacher sees the gold label and justifies it."""
    word = task.label_words[example.label]
    return Request(example.key, LABEL_PROMPT.format(input=task.format(example.fields), answer=word), word,
                   example.label)


def cot_prompt(task: Task, example: Example) -> Request:
    """The unconditioned prompt: the teacher reasons to an answer of its own."""
    prompt = COT_PROMPT.format(input=task.format(example.fields), choices=", ".join(task.label_words))
    return Request(example.key, prompt, task.label_words[example.label], example.label, tuple(task.label_words))
