"""Custom tasks: any JSONL with a text field (or named fields) and a label, declared in a small JSON spec.

Example spec (paths are relative to the spec file):

    {"name": "sentiment", "labels": ["negative", "positive"],
     "template": "Review:\\n{text}\\nIs the review positive? Answer Yes or No.",
     "label_words": ["No", "Yes"], "label_field": "label",
     "train": "train.jsonl", "val": "val.jsonl"}

`template` defaults to "{text}"; `label_words` default to the labels; `metric` to accuracy.
"""
from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Mapping

from .base import RecordRows, Task, TaskError

SPEC_KEYS = {"name", "labels", "label_words", "template", "label_field", "id_field", "metric", "train", "val", "test"}


def template_fields(template: str) -> tuple[str, ...]:
    """Placeholder names of a `str.format` template, in order, without repeats."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    except ValueError as exc:
        raise TaskError(f"custom task template {template!r} is not a valid format string: {exc}") from exc
    if not names:
        raise TaskError(f"custom task template {template!r} has no {{field}} placeholder")
    return tuple(dict.fromkeys(names))


def task_from_spec(spec: Mapping[str, Any], base_dir: Path | None = None) -> Task:
    """Build a Task from a spec dict (a spec file's content, or an export manifest's copy of it)."""
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise TaskError(f"custom task spec: unknown key(s) {sorted(unknown)}; allowed {sorted(SPEC_KEYS)}")
    for key in ("name", "labels"):
        if key not in spec:
            raise TaskError(f"custom task spec: missing required key {key!r}")
    labels = tuple(str(label) for label in spec["labels"])
    template = spec.get("template", "{text}")
    fields = template_fields(template)
    label_field = spec.get("label_field", "label")
    id_field = spec.get("id_field")
    splits = {}
    for split in ("train", "val", "test"):
        if split in spec:
            path = Path(spec[split])
            splits[split] = str(path if path.is_absolute() or base_dir is None else (base_dir / path).resolve())

    def rows(record: Mapping[str, Any]) -> RecordRows:
        # The reader fills `idx` with the 0-based line number when a record has none.
        key = str(record[id_field]) if id_field and id_field in record else str(record["idx"])
        yield key, {f: record.get(f) for f in fields}, record.get(label_field), None

    portable = {k: v for k, v in spec.items() if k not in ("train", "val", "test")}
    return Task(
        name=str(spec["name"]).lower(),
        labels=labels,
        label_words=tuple(str(w) for w in spec.get("label_words", labels)),
        fields=fields,
        required=fields,
        template=lambda f: template.format(**{k: "" if v is None else v for k, v in f.items()}),
        metric=spec.get("metric", "accuracy"),
        splits=splits,
        rows=rows,
        raw_labels={label: label for label in labels},
        field_types={f: "scalar" for f in fields},
        spec=portable,
    )


def load_spec(path: Path) -> Task:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise TaskError(f"custom task spec {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise TaskError(f"custom task spec {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(spec, dict):
        raise TaskError(f"custom task spec {path}: expected a JSON object")
    return task_from_spec(spec, base_dir=path.parent)
