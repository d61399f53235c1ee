"""Prediction and the official SuperGLUE metrics (accuracy; CB acc + macro-F1; MultiRC F1a + EM)."""
from __future__ import annotations

import json
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch

from contract.encoding import encode_input, ensure_pad_token
from contract.model import pad_batch
from contract.tasks import Example, Task

from .data import load_examples
from .run_dir import EVAL_DIR, load_run_model


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


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_logits(model, tokenizer, task: Task, examples: Sequence[Example], max_length: int,
                   batch_size: int = 16, precision: str = "bf16") -> torch.Tensor:
    """(N, K) float32 logits of `model.classify` on inputs alone, batched by length to cut padding."""
    device = next(model.parameters()).device
    encoded = [encode_input(tokenizer, task.format(e.fields), max_length)[0] for e in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    logits = torch.empty(len(encoded), task.num_labels)
    was_training = model.training
    model.eval()
    pad_id = ensure_pad_token(tokenizer).pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([encoded[i] for i in idx], pad_id)
        with autocast(precision, device):
            logits[idx] = model.classify(ids.to(device), mask.to(device)).float().cpu()
    model.train(was_training)
    return logits


def write_predictions(path: Path, task: Task, examples: Sequence[Example], logits: torch.Tensor) -> None:
    """One JSON row per example: `key`, `pred` (the predicted label), `gold` (the true label, null when the split
    has none) and `probs` (in the order of the task's labels). Files written before this naming held the
    prediction under `label` (scripts/compare_runs.py reads both)."""
    probs = logits.softmax(-1)
    with open(path, "w", encoding="utf-8") as fh:
        for e, p in zip(examples, probs):
            k = int(p.argmax())
            row = {"key": e.key, "pred": task.labels[k], "gold": None if e.label is None else task.labels[e.label],
                   "probs": [round(float(x), 6) for x in p]}
            fh.write(json.dumps(row) + "\n")


def evaluate_run(run_dir: Path, split: str = "val", data_dir: Path | None = None, checkpoint: str = "best",
                 batch_size: int = 16, limit: int | None = None) -> dict[str, Any]:
    """Load a run's checkpoint, predict a split, write `eval/<split>.predictions.jsonl` and `.metrics.json`."""
    model, tokenizer, cfg, task = load_run_model(run_dir, checkpoint)
    examples = load_examples(task, split, data_dir or cfg.data_dir, limit=limit)
    logits = predict_logits(model, tokenizer, task, examples, cfg.max_length, batch_size, cfg.precision)
    out_dir = Path(run_dir) / EVAL_DIR
    out_dir.mkdir(exist_ok=True)
    write_predictions(out_dir / f"{split}.predictions.jsonl", task, examples, logits)
    result: dict[str, Any] = {"task": task.name, "split": split, "checkpoint": checkpoint, "examples": len(examples)}
    if all(e.label is not None for e in examples):
        result["metrics"] = compute_metrics(task, examples, logits.argmax(-1).tolist())
    else:
        result["metrics"] = {"note": f"split {split!r} has no labels; predictions only"}
    (out_dir / f"{split}.metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
