"""The `Task` declaration: how one classification task's records become model text and labels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping


class TaskError(ValueError):
    """Bad task data or declaration; the message names the file, line or field (`field` when known)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Example:
    """One classification example, after a task has flattened its raw record.

    `key` is stable across runs (task + idx; MultiRC down to the answer) so rationale
    files can be joined on it. `group` ties MultiRC answers to their question for EM.
    """

    key: str
    fields: dict[str, Any]
    label: int | None  # class index into Task.labels; None on unlabelled (test) splits
    group: str | None = None


# A record reader turns one raw JSONL record into (key suffix, fields, raw label, group) rows.
RecordRows = Iterator[tuple[str, dict[str, Any], Any, str | None]]


@dataclass(frozen=True)
class Task:
    """Everything training and serving need to know about one task.

    Attributes:
        name: registry name, lower case (`cb`, `rte`, ...).
        labels: native label names in class-index order (what the API returns).
        label_words: the word the reasoning head writes after "Final Answer:", one per label.
        fields: structured input fields accepted by the service (`required` ones first).
        required: the subset of `fields` that must be present.
        template: callable mapping a fields dict to the model input text.
        metric: "accuracy", "accuracy_f1" (CB) or "multirc" (F1a + EM).
        splits: split name -> path relative to the data root.
        rows: callable turning one raw record into example rows (see `RecordRows`).
        raw_labels: raw label value (as it appears in the data) -> label name.
        spec: a JSON-able description for custom tasks, recorded in export manifests.
        field_types: fields that are not text: "int" (offsets, indices), "text_list" (answer choices),
            or "scalar" (custom tasks: text or a number); every other field is "text".
        split_rows: split name -> [start, end) rows of its file (0-based, the record's `idx`) that the
            split holds; rows outside every range are never read (e-SNLI keeps rows for independent checks).
        key_prefixes: split name -> text put before each record id of that split's keys, for a task whose
            splits are different files numbered alike: e-SNLI's "train" (the released valid file) keys are
            `esnli/valid-N`, so no key of it can be read as test row N, which may be reserved.
    """

    name: str
    labels: tuple[str, ...]
    label_words: tuple[str, ...]
    fields: tuple[str, ...]
    required: tuple[str, ...]
    template: Callable[[Mapping[str, Any]], str]
    metric: str = "accuracy"
    splits: Mapping[str, str] = field(default_factory=dict)
    rows: Callable[[Mapping[str, Any]], RecordRows] | None = None
    raw_labels: Mapping[Any, str] = field(default_factory=dict)
    spec: Mapping[str, Any] | None = None
    field_types: Mapping[str, str] = field(default_factory=dict)
    split_rows: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    key_prefixes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise TaskError(f"task {self.name!r}: needs at least 2 labels, got {list(self.labels)}")
        if len(self.label_words) != len(self.labels):
            raise TaskError(
                f"task {self.name!r}: {len(self.label_words)} label words for {len(self.labels)} labels"
            )
        if self.metric not in {"accuracy", "accuracy_f1", "multirc"}:
            raise TaskError(f"task {self.name!r}: unknown metric {self.metric!r}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def check_fields(self, fields: Mapping[str, Any]) -> None:
        """Structured input as a caller sends it: known names, declared types, required text not blank.

        Raises TaskError whose `field` names the offending field (None for the object as a whole).
        """
        unknown = sorted(set(fields) - set(self.fields))
        if unknown:
            raise TaskError(f"unknown field(s) {[_short(u) for u in unknown]}; expected {list(self.fields)}",
                            field=_short(unknown[0]))
        for name in self.fields:
            value = fields.get(name)
            if value is None:
                if name in self.required:
                    raise TaskError(f"missing field {name!r}; required: {list(self.required)}", field=name)
                continue
            problem = _type_problem(value, self.field_types.get(name, "text"))
            if problem is None and name in self.required and isinstance(value, str) and not value.strip():
                problem = "is empty"
            if problem:
                raise TaskError(f"field {name!r} {problem}", field=name)

    def format(self, fields: Mapping[str, Any]) -> str:
        """Model input text for one example; raises TaskError naming a missing field."""
        missing = [f for f in self.required if f not in fields or fields[f] is None]
        if missing:
            raise TaskError(f"task {self.name!r}: missing field(s) {missing}; expected {list(self.required)}")
        return self.template(fields)

    def label_index(self, raw: Any) -> int:
        """Class index of a raw label value; raises TaskError for a label outside the set."""
        name = self.raw_labels.get(raw, raw) if _hashable(raw) else raw
        if isinstance(name, str) and name in self.labels:
            return self.labels.index(name)
        raise TaskError(f"task {self.name!r}: label {raw!r} is not one of {list(self.labels)}")


def _type_problem(value: Any, kind: str) -> str | None:
    """Why `value` is not of the declared field kind, or None."""
    if kind == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else f"must be an integer, got {type(value).__name__}"
    if kind == "text_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a list of strings"
        return next((p for p in map(text_problem, value) if p), None)
    if kind == "scalar" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    return text_problem(value)


def text_problem(text: str) -> str | None:
    """Text a tokenizer cannot take: lone UTF-16 surrogates (valid JSON escapes, not valid Unicode text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (it holds a lone surrogate)"
    return None


def _short(name: str, limit: int = 40) -> str:
    """A caller's field name, safe to echo: printable, ASCII-escaped and cut."""
    shown = name.encode("ascii", "backslashreplace").decode()
    return shown if len(shown) <= limit else shown[:limit] + "..."


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
