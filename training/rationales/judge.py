"""Judging a teacher's completion: cleaning it into a rationale and the reasons to reject one."""
from __future__ import annotations

import re

from contract.text import parse_answer

from .prompts import SENTINEL, Request

MIN_WORDS, MAX_WORDS = 5, 160
_ANSWER_LINE = re.compile(r"^\s*(final\s+)?answer\s*[:：].*$", re.IGNORECASE | re.MULTILINE)


def clean_rationale(text: str) -> str:
    """Cut at the sentinel, drop trailing `Answer: ...` lines and reasoning headers, squeeze space."""
    text = text.split(SENTINEL)[0]
    text = text.split("[END")[0]
    text = _ANSWER_LINE.sub("", text)
    text = re.sub(r"^\s*(reasoning|explanation)\s*[:：]\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", text).strip()


def reject_reason(text: str, label_word: str) -> str | None:
    """Why a cleaned rationale is unusable, or None when it is fine."""
    words = text.split()
    if not words:
        return "empty"
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) >= 10 and len(set(trigrams)) < 0.7 * len(trigrams):
        return "repetitive"
    restating = re.compile(rf"\b(the\s+)?(correct\s+)?answer\s+is\s*[:\"']*\s*{re.escape(label_word)}\b", re.IGNORECASE)
    if restating.search(text):
        return "restates_label"
    return None


def judge(req: Request, raw: str | None) -> tuple[str, str | None]:
    """(cleaned text, reject reason or None) for one completion; `raw` is None when the teacher failed."""
    if raw is None:
        return "", "teacher_error"
    if req.label_words:  # CoT mode: the teacher's own answer must match the gold label
        answer = parse_answer(raw, req.label_words)
        if answer is None:
            return "", "no_answer"
        if answer != req.gold:
            return "", "disagrees_with_gold"
    text = clean_rationale(raw)
    return text, reject_reason(text, req.label_word)
