"""A run directory: its layout, preparing it (for `--resume` too), checkpoints, best weights, loading its model."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from contract.encoding import load_tokenizer
from contract.tasks import Task, get_task

from .config import TrainConfig
from .file_modes import plain_modes
from .lora import load_trainable, trainable_state
from .model import DualHeadModel, make_model

# Layout of <out>/, relative to the run directory.
CONFIG_FILE = "config.json"  # the TrainConfig, as passed
LOG_FILE = "log.jsonl"  # one row per logged optimizer step
SUMMARY_FILE = "summary.json"  # written when training ends
CHECKPOINT = "checkpoints/last.pt"  # everything `--resume` needs
BEST_DIR = "best"  # weights of the best validation score, and their meta.json
TRAINABLE_FILE = "trainable.safetensors"
BEST_META_FILE = "meta.json"
EVAL_DIR = "eval"  # `dhrd evaluate` writes here

# Flags that may differ between a run and its --resume (they do not change what is computed).
RESUMABLE_CHANGES = ("resume", "progress", "threads", "log_every", "save_every", "release_memory")


# --- the configuration -----------------------------------------------------------------------
def prepare_run_dir(run_dir: Path, cfg: TrainConfig) -> None:
    """Create `run_dir` and write `cfg` into it.

    Raises:
        ValueError: the directory already holds a checkpointed run and `cfg.resume` is off, or
            `cfg.resume` is on and `cfg` differs from the saved config beyond RESUMABLE_CHANGES.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / CONFIG_FILE
    if config_path.exists() and not cfg.resume and has_checkpoint(run_dir):
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


def load_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with. Raises FileNotFoundError when `run_dir` is not a run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE})")
    return TrainConfig.from_dict(json.loads(path.read_text()))


# --- checkpoints -----------------------------------------------------------------------------
def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).exists()


def save_checkpoint(run_dir: Path, model: DualHeadModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], cfg: TrainConfig) -> None:
    """Trainable weights, optimiser, scheduler, RNG and the loop's `state` (a plain dict, so any later
    code can read it back)."""
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    atomic_save({"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "rng": rng, "state": state, "config": cfg.to_dict()},
                run_dir / CHECKPOINT)


def restore_checkpoint(run_dir: Path, model: DualHeadModel, optimizer: torch.optim.Optimizer,
                       scheduler: Any) -> dict[str, Any]:
    """Load the last checkpoint into the model, optimiser, scheduler and RNGs.

    Returns:
        The loop's state as saved (a plain dict).
    Raises:
        ValueError: the checkpoint's weights are not parameters of `model`.
    """
    path = Path(run_dir) / CHECKPOINT
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
    return ckpt["state"]


# --- best weights ----------------------------------------------------------------------------
def save_best(model: DualHeadModel, run_dir: Path, info: dict[str, Any]) -> None:
    """Trainable weights as safetensors plus `info` (epoch, step, metrics, data) as meta.json."""
    from safetensors.torch import save_file

    best = run_dir / BEST_DIR
    best.mkdir(parents=True, exist_ok=True)
    tmp = best / (TRAINABLE_FILE + ".tmp")
    save_file(trainable_state(model), str(tmp))
    os.replace(plain_modes(tmp), best / TRAINABLE_FILE)
    (best / BEST_META_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_best_meta(run_dir: Path) -> dict[str, Any]:
    """meta.json of the best weights; empty when no epoch has finished."""
    path = Path(run_dir) / BEST_DIR / BEST_META_FILE
    return json.loads(path.read_text()) if path.exists() else {}


# --- loading a run's model -------------------------------------------------------------------
def resolve_backbone(cfg: TrainConfig) -> Path:
    """`--backbone`, else the embedded base model (materialised on first use)."""
    if cfg.backbone is not None:
        return cfg.backbone
    from .base_model import materialise

    return materialise()


def load_run_model(run_dir: Path, checkpoint: str = "best") -> tuple[DualHeadModel, Any, TrainConfig, Task]:
    """(model in eval mode, tokenizer, config, task) of a finished or running run, for evaluation and export.

    Args:
        checkpoint: "best" (best validation weights) or "last" (the resume checkpoint).
    Raises:
        FileNotFoundError: no config, or no best weights yet.
    """
    cfg = load_config(run_dir)
    task = get_task(cfg.task)
    backbone_path = resolve_backbone(cfg)
    model = make_model(cfg, task.num_labels, backbone_path)
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
