"""Task registry: the seven SuperGLUE tasks by name, or a custom task from a JSON spec file."""
from __future__ import annotations

from pathlib import Path

from .base import Example, Task, TaskError
from .custom import load_spec, task_from_spec
from .extra import EXTRA
from .flan import FLAN_TASKS
from .superglue import SUPERGLUE

__all__ = ["Example", "Task", "TaskError", "get_task", "task_from_spec", "TASK_NAMES"]

TASK_NAMES = tuple(SUPERGLUE)  # the paper's seven
REGISTRY = {**SUPERGLUE, **EXTRA, **FLAN_TASKS}


def get_task(name: str) -> Task:
    """A registered task by name (case-insensitive), or a custom task from `custom:SPEC.json` / `SPEC.json`."""
    if name.startswith("custom:") or name.endswith(".json"):
        return load_spec(Path(name.removeprefix("custom:")))
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(REGISTRY)} or custom:SPEC.json") from None
