"""The training recipe, top to bottom: setup → data → optimiser → the loop → end of epoch → summary."""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist

from contract.encoding import load_tokenizer
from contract.manifest import file_sha256
from contract.tasks import Example, Task, TaskError, get_task

from .config import TrainConfig
from .data import Features, build_features, collate, load_examples, split_path
from .evaluate import autocast, compute_metrics, predict_logits, resolve_precision
from .memory import peak_rss_mb, release_free_memory, rss_mb
from .model import DualHeadModel, make_model
from .splits import train_candidates, validation_examples
from .run_dir import (LOG_FILE, SUMMARY_FILE, has_checkpoint, prepare_run_dir, resolve_backbone, restore_checkpoint,
                      save_best, save_checkpoint)


# --- state -----------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where a run stands; checkpointed as a plain dict (`to_dict`) so any version of this code can resume it."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch under way (0-based)
    micro: int = 0  # micro-batches of this epoch already trained on
    best_score: float | None = None  # best validation score so far (rank 0)
    tokens: int = 0  # real (unpadded) tokens trained on by this process
    history: list[dict[str, Any]] = field(default_factory=list)  # one validation record per epoch end

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        """From a checkpoint's `state`; keys this version does not know are ignored, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LogWindow:
    """Loss sums and token count over the micro-batches since the last log line."""

    loss: float = 0.0
    cls: float = 0.0
    lm: float = 0.0
    n: int = 0  # micro-batches
    tokens: int = 0
    t0: float = field(default_factory=time.time)

    def add(self, out, tokens: int) -> None:
        self.loss += float(out.loss.detach())
        self.cls += float(out.cls_loss.detach())
        self.lm += float(out.lm_loss.detach()) if out.lm_loss is not None else 0.0
        self.n += 1
        self.tokens += tokens

    def reset(self) -> None:
        self.loss, self.cls, self.lm, self.n, self.tokens, self.t0 = 0.0, 0.0, 0.0, 0, 0, time.time()


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


# --- data ------------------------------------------------------------------------------------
def make_features(cfg: TrainConfig, task: Task, tokenizer,
                  split_examples: list[Example]) -> tuple[list[Features], dict[str, Any]]:
    """Token features of the train split (`split_examples`, less the --holdout slice, cut to
    --train-limit), and what they came from.

    With --only-with-rationales the examples are cut to those the rationale file covers, for
    alpha = 0 too, so a pooled baseline trains on exactly the examples its DHRD twin does.
    """
    examples = train_candidates(cfg, task, split_examples)
    train_file = split_path(task, "train", cfg.data_dir)
    data_info: dict[str, Any] = {"train_file": str(train_file), "train_sha256": file_sha256(train_file)}
    rationales: dict[str, str] = {}
    if cfg.uses_lm or cfg.only_with_rationales:
        rationales, examples = _join_rationales(cfg, task, examples, split_examples, data_info)
    data_info["train_examples"] = len(examples)
    feats = [build_features(task, e, tokenizer, cfg.max_length, rationales.get(e.key), with_suffix=cfg.uses_lm,
                            lm_span=cfg.lm_span, max_rationale_tokens=cfg.max_rationale_tokens) for e in examples]
    data_info["truncated_inputs"] = sum(f.truncated for f in feats)
    return feats, data_info


def _join_rationales(cfg: TrainConfig, task: Task, examples: list[Example], split_examples: list[Example],
                     data_info: dict[str, Any]) -> tuple[dict[str, str], list[Example]]:
    """(rationale by key, the examples to train on); records the rationale file in `data_info`."""
    from .rationales.rows import default_rationale_file, load_rationales

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
        print(f"[data] {missing} of {len(examples)} train examples have no rationale in {path}: {what}", flush=True)
    if cfg.only_with_rationales:
        examples = [e for e in examples if e.key in rationales]
    data_info.update(rationales_file=str(path), rationales_sha256=file_sha256(path),
                     rationales_used=len(rationales) if cfg.uses_lm else 0, rationales_missing=missing)
    return rationales, examples


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


# --- the run ---------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train one run; returns the final summary (also written to <out>/summary.json).

    Runs as one process, or under `torchrun` with DDP (gloo on CPU, NCCL on CUDA); rank 0 writes.
    A checkpoint holds trainable weights, optimiser, scheduler, RNG state and the data position, so
    `--resume` after a kill loses at most `save_every` steps and ends where an uninterrupted run ends.
    """
    started = time.time()
    d = setup_distributed()
    # 'auto' becomes what runs on this device before the config is written: config.json, a resume's
    # comparison and evaluation from the run all see the precision really used.
    cfg.precision = resolve_precision(cfg.precision, d.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    run_dir = cfg.out
    task = get_task(cfg.task)
    if d.main:
        prepare_run_dir(run_dir, cfg)
    backbone_path = resolve_backbone(cfg)
    tokenizer = load_tokenizer(backbone_path, cfg.trust_remote_code)
    train_split = load_examples(task, "train", cfg.data_dir)
    features, data_info = make_features(cfg, task, tokenizer, train_split)
    val_examples = validation_examples(cfg, task, train_split)
    data_info.update(val_source="holdout of train" if cfg.holdout else "val", val_examples=len(val_examples))
    model = make_model(cfg, task.num_labels, backbone_path).to(d.device)
    model.train()
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(epoch_batches(features, cfg, 0, d)) / cfg.grad_accum)
    total_steps = min(cfg.max_steps or 10**12, steps_per_epoch * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(cfg.warmup_steps, total_steps))
    state = TrainState()
    if cfg.resume and has_checkpoint(run_dir):
        state = TrainState.from_dict(restore_checkpoint(run_dir, model, optimizer, scheduler))
        print(f"[resume] step {state.step}, epoch {state.epoch}, micro-batch {state.micro}", flush=True)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else None

    bar = _progress(cfg, d, total_steps, state.step)
    log = open(run_dir / LOG_FILE, "a", encoding="utf-8") if d.main else None
    window = LogWindow()
    stop = state.step >= total_steps
    while state.epoch < cfg.epochs and not stop:
        batches = epoch_batches(features, cfg, state.epoch, d)
        while state.micro < len(batches):
            batch = collate([features[i] for i in batches[state.micro]], tokenizer.pad_token_id, with_lm=cfg.uses_lm)
            batch = {k: v.to(d.device) for k, v in batch.items()}
            state.micro += 1
            boundary = state.micro % cfg.grad_accum == 0 or state.micro == len(batches)
            out = _forward_backward(model, ddp, batch, cfg, d, sync=boundary)
            tokens = int(batch["attention_mask"].sum())
            window.add(out, tokens)
            state.tokens += tokens
            if not boundary:
                continue
            _optimizer_step(model, optimizer, scheduler, cfg.clip)
            if cfg.release_memory:
                release_free_memory()
            state.step += 1
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                _log_step(log, bar, window, state, scheduler, d)
            if d.main and state.step % cfg.save_every == 0:
                save_checkpoint(run_dir, model, optimizer, scheduler, state.to_dict(), cfg)
            if state.step >= total_steps:
                stop = True
                break
        # End of the epoch, or of a run cut short by --max-steps: validate; then checkpoint either way.
        epoch_done = state.micro >= len(batches)
        if epoch_done or stop:
            _end_of_epoch(cfg, d, model, tokenizer, task, val_examples, state, data_info)
        if epoch_done:
            state.epoch += 1
            state.micro = 0
        if d.main:
            save_checkpoint(run_dir, model, optimizer, scheduler, state.to_dict(), cfg)
    if bar is not None:
        bar.close()

    summary = _summary(cfg, state, data_info)
    summary["wall_seconds_this_process"] = round(time.time() - started, 1)
    if d.main:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        log.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


# --- one micro-batch, one step ---------------------------------------------------------------
def _forward_backward(model: DualHeadModel, ddp, batch: dict[str, torch.Tensor], cfg: TrainConfig, d: Dist,
                      sync: bool):
    """Loss of one micro-batch, its gradient accumulated. Under DDP the gradients are all-reduced only
    when `sync` (the last micro-batch before an optimizer step); the others skip the communication."""
    context = nullcontext() if (ddp is None or sync) else ddp.no_sync()
    with context:
        with autocast(cfg.precision, d.device):
            out = (ddp or model)(**batch)
        (out.loss / cfg.grad_accum).backward()
    return out


def _optimizer_step(model: DualHeadModel, optimizer: torch.optim.Optimizer, scheduler, clip: float) -> None:
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _progress(cfg: TrainConfig, d: Dist, total: int, initial: int):
    if not (cfg.progress and d.main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc=f"train {cfg.task} a={cfg.alpha:g}", dynamic_ncols=True)


def _log_step(log, bar, window: LogWindow, state: TrainState, scheduler, d: Dist) -> None:
    """Write the window's means as one log.jsonl row (rank 0), update the bar, start a new window."""
    elapsed = max(time.time() - window.t0, 1e-9)
    n = max(window.n, 1)
    row = {"step": state.step, "epoch": state.epoch, "loss": window.loss / n, "cls_loss": window.cls / n,
           "lm_loss": window.lm / n, "lr": scheduler.get_last_lr()[0],
           "tokens_per_s": window.tokens * d.world / elapsed, "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
           "time": time.time()}
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()
    if bar is not None:
        bar.set_postfix(ce=f"{row['cls_loss']:.3f}", lm=f"{row['lm_loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
        bar.update(state.step - bar.n)
    window.reset()


# --- end of epoch ----------------------------------------------------------------------------
def _end_of_epoch(cfg: TrainConfig, d: Dist, model: DualHeadModel, tokenizer, task: Task, val_examples: list[Example],
                  state: TrainState, data_info: dict[str, Any]) -> None:
    """Validate on rank 0 and keep the best weights by the task's score."""
    if d.main:
        t0 = time.time()
        logits = predict_logits(model, tokenizer, task, val_examples, cfg.max_length, cfg.eval_batch_size,
                                cfg.precision)
        metrics = compute_metrics(task, val_examples, logits.argmax(-1).tolist())
        record = {"epoch": state.epoch, "step": state.step, "val": metrics, "eval_seconds": time.time() - t0}
        state.history.append(record)
        print(f"[eval] epoch {state.epoch} step {state.step}: "
              + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()), flush=True)
        if state.best_score is None or metrics["score"] > state.best_score:
            state.best_score = metrics["score"]
            save_best(model, cfg.out, {**record, "data": data_info})
    if d.world > 1:
        dist.barrier()


def _summary(cfg: TrainConfig, state: TrainState, data_info: dict[str, Any]) -> dict[str, Any]:
    best = max(state.history, key=lambda r: r["val"]["score"]) if state.history else None
    return {"task": cfg.task, "alpha": cfg.alpha, "beta": cfg.beta, "lora": cfg.lora, "steps": state.step,
            "tokens": state.tokens, "best": best, "history": state.history, "data": data_info,
            "peak_rss_mb_this_process": peak_rss_mb()}

