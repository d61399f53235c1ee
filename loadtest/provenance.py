"""Where a measurement was taken: the machine and the commit (with `-dirty` for uncommitted changes)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from . import REPO


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "node": platform.node()}


def commit() -> str:
    """HEAD's short hash (+ "-dirty"); $DHRD_COMMIT where the checkout has no git (a copied tree)."""
    try:
        return _git_commit()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("DHRD_COMMIT", "unknown")


# Where measurements are written. A run that appends to a tracked results file (the accuracy study's
# rows, a benchmark's report) changes no code, so it must not mark the next row "-dirty".
RESULT_PATHS = (":(exclude)reports", ":(exclude)loadtest/results")


def _git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *RESULT_PATHS],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head.strip():
        return os.environ.get("DHRD_COMMIT", "unknown")
    return head.strip() + ("-dirty" if dirty else "")
