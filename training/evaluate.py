"""Prediction on a split; the official metrics are the contract's (`contract.metrics`, re-exported here)."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch

from contract.encoding import encode_input, ensure_pad_token
from contract.metrics import compute_metrics, f1_binary  # noqa: F401  (re-exported)
from contract.model import pad_batch, resolve_dtype
from contract.tasks import Example, Task

from .data import load_examples
from .run_dir import EVAL_DIR, load_run_model
from .splits import unseen_holdout


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' as 'bf16' where `device` runs bf16 matmuls natively, else 'fp32' (the rule `serve --dtype auto`
    follows, `contract.model.resolve_dtype`); other values unchanged."""
    if precision != "auto":
        return precision
    return {"bfloat16": "bf16", "float32": "fp32"}[resolve_dtype("auto", device.type)]


def autocast(precision: str, device: torch.device):
    if resolve_precision(precision, device) == "bf16":
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
                 batch_size: int = 16, limit: int | None = None, precision: str | None = None) -> dict[str, Any]:
    """Load a run's checkpoint, predict a split, write `eval/<split>.predictions.jsonl` and `.metrics.json`.
    Split "holdout" is the run's held-out slice of train less what it trained on (`splits.unseen_holdout`).
    `precision` (default: the run's training precision) sets the scoring passes' autocast; the metrics
    file records the precision used."""
    model, tokenizer, cfg, task = load_run_model(run_dir, checkpoint)
    device = next(model.parameters()).device
    scored_in = resolve_precision(precision or cfg.precision, device)
    if split == "holdout":
        examples = unseen_holdout(cfg, task, data_dir)[:limit]
    else:
        examples = load_examples(task, split, data_dir or cfg.data_dir, limit=limit)
    logits = predict_logits(model, tokenizer, task, examples, cfg.max_length, batch_size, scored_in)
    out_dir = Path(run_dir) / EVAL_DIR
    out_dir.mkdir(exist_ok=True)
    write_predictions(out_dir / f"{split}.predictions.jsonl", task, examples, logits)
    result: dict[str, Any] = {"task": task.name, "split": split, "checkpoint": checkpoint, "examples": len(examples),
                              "precision": scored_in, "trained_precision": cfg.precision}
    if all(e.label is not None for e in examples):
        result["metrics"] = compute_metrics(task, examples, logits.argmax(-1).tolist())
    else:
        result["metrics"] = {"note": f"split {split!r} has no labels; predictions only"}
    (out_dir / f"{split}.metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
