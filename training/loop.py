"""The training recipe, top to bottom: setup → features → optimiser → loop (log, checkpoint, eval) → best.

Runs as one process, or under `torchrun` with DDP (gloo on CPU, NCCL on CUDA); rank 0 writes.
A checkpoint holds trainable weights, optimiser, scheduler, RNG state and the data position, so
`--resume` after a kill loses at most `save_every` steps.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .config import TrainConfig
from .data import Features, build_features, collate, file_sha256, load_examples, split_path
from .evaluate import autocast, compute_metrics, predict_logits
from .lora import apply_lora, load_trainable, trainable_state
from .model import DualHeadModel, build_model, is_tied
from .tasks import Task, TaskError, get_task

CHECKPOINT = "checkpoints/last.pt"
BEST_DIR = "best"
TRAINABLE_FILE = "trainable.safetensors"
# Flags that may differ between a run and its --resume (they do not change what is computed).
RESUMABLE_CHANGES = ("resume", "progress", "threads", "log_every", "save_every")


# --- setup -----------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """DDP when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() \
        else torch.device("cpu")
    if world == 1:
        return Dist(device=device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), world, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_backbone(cfg: TrainConfig) -> Path:
    if cfg.backbone is not None:
        return cfg.backbone
    from .base_model import materialise

    return materialise()


def load_tokenizer(path: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked; any id will do
    return tokenizer


def make_model(cfg: TrainConfig, task: Task, backbone_path: Path) -> DualHeadModel:
    """The backbone with head, LoRA (or all weights) trainable as configured."""
    model = build_model(backbone_path, task.num_labels, cfg.pooling, cfg.alpha, cfg.beta, cfg.head_dropout,
                        cfg.trust_remote_code, cfg.head)
    if cfg.lora:
        model.backbone = apply_lora(model.backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout,
                                    [t.strip() for t in cfg.lora_targets.split(",") if t.strip()])
    elif not is_tied(model):
        # An untied LM head is not exported and, with alpha = 0, never used: keep it frozen.
        model.lm_head.requires_grad_(cfg.alpha > 0)
    return model


def load_run_model(run_dir: Path, checkpoint: str = "best"):
    """(model, tokenizer, config, task) of a finished or running run, for evaluation and export."""
    cfg = TrainConfig.load(run_dir)
    task = get_task(cfg.task)
    backbone_path = resolve_backbone(cfg)
    model = make_model(cfg, task, backbone_path)
    weights = Path(run_dir) / BEST_DIR / TRAINABLE_FILE
    if checkpoint == "last":
        ckpt = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=False)
        model.load_state_dict(ckpt["trainable"], strict=False)
    elif weights.exists():
        load_trainable(model, weights)
    else:
        raise FileNotFoundError(f"{run_dir}: no {BEST_DIR}/{TRAINABLE_FILE} (has training finished an epoch?)")
    model.eval()
    return model, load_tokenizer(backbone_path, cfg.trust_remote_code), cfg, task


# --- data ------------------------------------------------------------------------------------
def make_features(cfg: TrainConfig, task: Task, tokenizer) -> tuple[list[Features], dict[str, Any]]:
    """Token features of the train split (or its first --train-limit examples).

    With --only-with-rationales the examples are cut to those the rationale file covers, for
    alpha = 0 too, so a pooled baseline trains on exactly the examples its DHRD twin does.
    """
    split_examples = load_examples(task, "train", cfg.data_dir)
    examples = split_examples[: cfg.train_limit] if cfg.train_limit else split_examples
    data_info: dict[str, Any] = {"train_file": str(split_path(task, "train", cfg.data_dir)),
                                 "train_sha256": file_sha256(split_path(task, "train", cfg.data_dir))}
    rationales: dict[str, str] = {}
    if cfg.uses_lm or cfg.only_with_rationales:
        from .rationales import default_rationale_file, load_rationales

        path = cfg.rationales or default_rationale_file(task, "train")
        if path is None:
            raise TaskError(f"alpha={cfg.alpha} needs rationales: no data/rationales/{task.name}.train.jsonl[.gz]; "
                            "pass --rationales FILE (see `dhrd rationales`) or --alpha 0")
        rationales = load_rationales(path, task, examples,
                                     skip_missing=cfg.skip_missing_rationales or cfg.only_with_rationales,
                                     split_examples=split_examples)
        missing = sum(e.key not in rationales for e in examples)
        if missing:
            what = "left out" if cfg.only_with_rationales else "trained on the classification loss only"
            print(f"[data] {missing} of {len(examples)} train examples have no rationale in {path}: {what}",
                  flush=True)
        if cfg.only_with_rationales:
            examples = [e for e in examples if e.key in rationales]
        data_info.update(rationales_file=str(path), rationales_sha256=file_sha256(path),
                         rationales_used=len(rationales) if cfg.uses_lm else 0, rationales_missing=missing)
    data_info["train_examples"] = len(examples)
    feats = [build_features(task, e, tokenizer, cfg.max_length, rationales.get(e.key), with_suffix=cfg.uses_lm,
                            lm_span=cfg.lm_span, max_rationale_tokens=cfg.max_rationale_tokens) for e in examples]
    data_info["truncated_inputs"] = sum(f.truncated for f in feats)
    return feats, data_info


def epoch_batches(features: list[Features], cfg: TrainConfig, epoch: int, d: Dist) -> list[list[int]]:
    """This rank's micro-batches for one epoch: a seeded shuffle, then length-sorted windows
    (less padding on CPU) whose batch order is shuffled again. Same seed → same batches."""
    g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    order = torch.randperm(len(features), generator=g).tolist()[d.rank::d.world]
    window = cfg.batch_size * 8
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: len(features[i].input_ids))
        batches += [chunk[i:i + cfg.batch_size] for i in range(0, len(chunk), cfg.batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


# --- optimisation ----------------------------------------------------------------------------
def make_optimizer(model: DualHeadModel, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the head has its own LR (it starts from random); no decay on norms and biases."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("head."), p.ndim >= 2), []).append(p)
    return torch.optim.AdamW([
        {"params": params, "lr": cfg.head_lr if is_head else cfg.lr,
         "weight_decay": cfg.weight_decay if decays else 0.0}
        for (is_head, decays), params in groups.items()])


def cosine_with_warmup(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


# --- checkpoints -----------------------------------------------------------------------------
def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def save_best(model: DualHeadModel, run_dir: Path, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    best = run_dir / BEST_DIR
    best.mkdir(parents=True, exist_ok=True)
    tmp = best / (TRAINABLE_FILE + ".tmp")
    save_file(trainable_state(model), str(tmp))
    os.replace(tmp, best / TRAINABLE_FILE)
    (best / "meta.json").write_text(json.dumps(info, indent=2) + "\n")


# --- the loop --------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run; returns the final summary (also written to <out>/summary.json)."""
    started = time.time()
    d = setup_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run_dir = cfg.out
    task = get_task(cfg.task)
    if d.main:
        _prepare_run_dir(run_dir, cfg)
    backbone_path = resolve_backbone(cfg)
    tokenizer = load_tokenizer(backbone_path, cfg.trust_remote_code)
    features, data_info = make_features(cfg, task, tokenizer)
    val_examples = load_examples(task, "val", cfg.data_dir, limit=cfg.eval_limit)
    model = make_model(cfg, task, backbone_path).to(d.device)
    model.train()
    optimizer = make_optimizer(model, cfg)

    micro_per_epoch = len(epoch_batches(features, cfg, 0, d))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = min(cfg.max_steps or 10**12, steps_per_epoch * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, total_steps))
    state = {"step": 0, "epoch": 0, "micro": 0, "best_score": None, "tokens": 0, "history": []}
    if cfg.resume and (run_dir / CHECKPOINT).exists():
        state = _restore(run_dir / CHECKPOINT, model, optimizer, scheduler)
    pad_id = tokenizer.pad_token_id
    ddp = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else None
    runner = ddp or model

    bar = _progress(cfg, d, total_steps, state["step"])
    log = open(run_dir / "log.jsonl", "a", encoding="utf-8") if d.main else None
    window = {"loss": 0.0, "cls": 0.0, "lm": 0.0, "n": 0, "tokens": 0, "t0": time.time()}
    stop = state["step"] >= total_steps
    while state["epoch"] < cfg.epochs and not stop:
        batches = epoch_batches(features, cfg, state["epoch"], d)
        while state["micro"] < len(batches):
            batch = collate([features[i] for i in batches[state["micro"]]], pad_id, with_lm=cfg.uses_lm)
            batch = {k: v.to(d.device) for k, v in batch.items()}
            state["micro"] += 1
            boundary = state["micro"] % cfg.grad_accum == 0 or state["micro"] == len(batches)
            sync = nullcontext() if (ddp is None or boundary) else ddp.no_sync()
            with sync:
                with autocast(cfg.precision, d.device):
                    out = runner(**batch)
                (out.loss / cfg.grad_accum).backward()
            _accumulate(window, out, batch)
            state["tokens"] += int(batch["attention_mask"].sum())
            if not boundary:
                continue
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
                _log_step(log, bar, window, state, scheduler, d)
            if d.main and state["step"] % cfg.save_every == 0:
                _save(run_dir, model, optimizer, scheduler, state, cfg)
            if state["step"] >= total_steps:
                stop = True
                break
        epoch_done = state["micro"] >= len(batches)
        if epoch_done or stop:
            _end_of_epoch(cfg, d, model, tokenizer, task, val_examples, state, run_dir, data_info)
        if epoch_done:
            state["epoch"] += 1
            state["micro"] = 0
        if d.main:
            _save(run_dir, model, optimizer, scheduler, state, cfg)
    if bar is not None:
        bar.close()
    summary = _summary(cfg, state, data_info)
    summary["wall_seconds_this_process"] = round(time.time() - started, 1)
    if d.main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _prepare_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.exists() and not cfg.resume and (run_dir / CHECKPOINT).exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and config_path.exists():
        # Normalised through TrainConfig so fields added since the run started take their defaults.
        saved = TrainConfig.from_dict(json.loads(config_path.read_text())).to_dict()
        old = {k: v for k, v in saved.items() if k not in RESUMABLE_CHANGES}
        new = {k: v for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES}
        changed = sorted(k for k in new if old.get(k) != new[k])
        if changed:
            raise ValueError(f"--resume with a different config: {changed}; resume with the same flags")
    config_path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def _progress(cfg: TrainConfig, d: Dist, total: int, initial: int):
    if not (cfg.progress and d.main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc=f"train {cfg.task} a={cfg.alpha:g}", dynamic_ncols=True)


def _accumulate(window: dict, out, batch: dict[str, torch.Tensor]) -> None:
    window["loss"] += float(out.loss.detach())
    window["cls"] += float(out.cls_loss.detach())
    window["lm"] += float(out.lm_loss.detach()) if out.lm_loss is not None else 0.0
    window["n"] += 1
    window["tokens"] += int(batch["attention_mask"].sum())


def _log_step(log, bar, window: dict, state: dict, scheduler, d: Dist) -> None:
    elapsed = max(time.time() - window["t0"], 1e-9)
    n = max(window["n"], 1)
    row = {"step": state["step"], "epoch": state["epoch"], "loss": window["loss"] / n, "cls_loss": window["cls"] / n,
           "lm_loss": window["lm"] / n, "lr": scheduler.get_last_lr()[0],
           "tokens_per_s": window["tokens"] * d.world / elapsed, "time": time.time()}
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()
    if bar is not None:
        bar.set_postfix(ce=f"{row['cls_loss']:.3f}", lm=f"{row['lm_loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(state["step"] - bar.n)
    window.update(loss=0.0, cls=0.0, lm=0.0, n=0, tokens=0, t0=time.time())


def _end_of_epoch(cfg, d: Dist, model, tokenizer, task, val_examples, state, run_dir, data_info) -> None:
    """Validate on rank 0 and keep the best weights by the task's score."""
    if d.main:
        t0 = time.time()
        logits = predict_logits(model, tokenizer, task, val_examples, cfg.max_length, cfg.eval_batch_size,
                                cfg.precision)
        metrics = compute_metrics(task, val_examples, logits.argmax(-1).tolist())
        record = {"epoch": state["epoch"], "step": state["step"], "val": metrics, "eval_seconds": time.time() - t0}
        state["history"].append(record)
        print(f"[eval] epoch {state['epoch']} step {state['step']}: "
              + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        if state["best_score"] is None or metrics["score"] > state["best_score"]:
            state["best_score"] = metrics["score"]
            save_best(model, run_dir, {**record, "data": data_info})
    if d.world > 1:
        dist.barrier()


def _save(run_dir: Path, model, optimizer, scheduler, state: dict, cfg: TrainConfig) -> None:
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    atomic_save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng, "state": state, "config": cfg.to_dict()},
                run_dir / CHECKPOINT)


def _restore(path: Path, model, optimizer, scheduler) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG state is plain Python
    missing = [k for k in ckpt["trainable"] if k not in dict(model.named_parameters())]
    if missing:
        raise ValueError(f"{path}: checkpoint weights do not match the model (first: {missing[:3]})")
    model.load_state_dict(ckpt["trainable"], strict=False)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    print(f"[resume] step {ckpt['state']['step']}, epoch {ckpt['state']['epoch']}, "
          f"micro-batch {ckpt['state']['micro']}", flush=True)
    return ckpt["state"]


def _summary(cfg: TrainConfig, state: dict, data_info: dict) -> dict[str, Any]:
    best = max(state["history"], key=lambda r: r["val"]["score"]) if state["history"] else None
    return {"task": cfg.task, "alpha": cfg.alpha, "beta": cfg.beta, "lora": cfg.lora, "steps": state["step"],
            "tokens": state["tokens"], "best": best, "history": state["history"], "data": data_info}
