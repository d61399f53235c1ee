"""Accuracy of a running service on a task's validation split, classified through its HTTP API."""
from __future__ import annotations

import time

import httpx


def predict_split(url: str, path: str, model: str, task, examples: list, chunk: int, **extra) -> list[int]:
    """Label indices the service at `url` answers for `examples` (task field objects), `chunk` per request."""
    preds: list[int] = []
    for i in range(0, len(examples), chunk):
        part = examples[i:i + chunk]
        body = {"model": model, "input": [{k: v for k, v in e.fields.items() if v is not None} for e in part],
                "truncate": True, **extra}
        response = httpx.post(f"{url}{path}", json=body, timeout=900)
        response.raise_for_status()
        # An unparsed CoT answer (label null) counts as wrong: no label is invented for it.
        preds += [task.labels.index(d["label"]) if d["label"] is not None else -1 for d in response.json()["data"]]
    return preds


def accuracy(port: int, task_name: str, model: str, path: str, limit: int | None, cot_tokens: int | None) -> dict:
    """Accuracy of one endpoint on the served task's validation split (full-length inputs), sent in
    requests of 8 so batching applies; CoT with the paper's decoding settings."""
    from contract.tasks import get_task
    from contract.data import load_examples

    task = get_task(task_name)
    examples = load_examples(task, "val")[:limit]
    extra = dict(temperature=0.1, top_p=0.7, max_new_tokens=cot_tokens, seed=0) if cot_tokens else {}
    started = time.perf_counter()
    preds = predict_split(f"http://127.0.0.1:{port}", path, model, task, examples, 8, **extra)
    correct = sum(p == e.label for p, e in zip(preds, examples))
    return {"examples": len(examples), "accuracy": round(correct / len(examples), 4),
            "seconds": round(time.perf_counter() - started, 1)}
