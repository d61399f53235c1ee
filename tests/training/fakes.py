"""Test doubles shared by tests and the subprocesses they start."""
from __future__ import annotations

import time


class EchoTeacher:
    """A deterministic stand-in teacher: rejects the first try of every third prompt."""

    teacher_id = "echo"
    params = {"kind": "echo"}

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0

    def complete(self, prompts, attempt):
        self.calls += 1
        time.sleep(self.delay)
        out = []
        for p in prompts:
            bad = attempt == 0 and hash(p) % 3 == 0
            out.append("No." if bad else f"The text supports it in {len(p)} characters of evidence. [END OF REASONING]")
        return out
