"""The official metrics of a task's predictions (SuperGLUE: accuracy; CB accuracy + macro-F1; MultiRC
F1a + EM), and the one `score` that picks a checkpoint. Pure Python (no torch): training, the load tool
and scripts score the same way."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from .tasks import Example, Task


def f1_binary(gold: Sequence[int], pred: Sequence[int], positive: int = 1) -> float:
    tp = sum(g == positive and p == positive for g, p in zip(gold, pred))
    fp = sum(g != positive and p == positive for g, p in zip(gold, pred))
    fn = sum(g == positive and p != positive for g, p in zip(gold, pred))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def compute_metrics(task: Task, examples: Sequence[Example], preds: Sequence[int]) -> dict[str, float]:
    """Official metric(s) of the task, plus `score`: the single number used to pick the best checkpoint
    (the mean of the two metrics for CB and MultiRC, as the paper averages them)."""
    gold = [e.label for e in examples]
    if any(g is None for g in gold):
        raise ValueError("metrics need labelled examples")
    accuracy = sum(g == p for g, p in zip(gold, preds)) / len(gold)
    if task.metric == "accuracy":
        return {"accuracy": accuracy, "score": accuracy}
    if task.metric == "accuracy_f1":
        f1 = sum(f1_binary(gold, preds, k) for k in range(task.num_labels)) / task.num_labels
        return {"accuracy": accuracy, "f1_macro": f1, "score": (accuracy + f1) / 2}
    # MultiRC: F1a over all answer options (positive = True), EM over questions.
    positive = task.labels.index("True")
    f1a = f1_binary(gold, preds, positive)
    by_question: dict[str, list[bool]] = defaultdict(list)
    for e, p in zip(examples, preds):
        by_question[e.group or e.key].append(e.label == p)
    em = sum(all(v) for v in by_question.values()) / len(by_question)
    return {"f1a": f1a, "em": em, "accuracy": accuracy, "score": (f1a + em) / 2}
