"""Which examples of a task a run trains on, validates on, and can be scored on without having seen them.

The --holdout slice is picked by a hash of each example's group (a MultiRC question's answer options go
together) or of its formatted input: a duplicate never sits on both sides, and the slice does not move
with --train-limit or the seed. Choices (epochs, lr, arm, precision) are made on it, never on a split
that is reported.
"""
from __future__ import annotations

from pathlib import Path

from contract.data import holdout_part, load_examples
from contract.tasks import Example, Task, TaskError

from .config import TrainConfig

# The slice `dhrd evaluate --split holdout` scores for a run trained without --holdout: the same hash at
# the fraction `--holdout 0.1` (TRAINING.md's advice) would use.
DEFAULT_HOLDOUT = 0.1


def is_held_out(cfg: TrainConfig, task: Task, example: Example, fraction: float | None = None) -> bool:
    """In the held-out slice of train (`fraction`, default the run's --holdout; 0: none)."""
    fraction = cfg.holdout if fraction is None else fraction
    return fraction > 0 and holdout_part(example.group or task.format(example.fields), fraction) == "val"


def train_candidates(cfg: TrainConfig, task: Task, split_examples: list[Example]) -> list[Example]:
    """The train split less the --holdout slice, cut to --train-limit: what a run trains on before the
    rationale join (which can only drop examples)."""
    examples = [e for e in split_examples if not is_held_out(cfg, task, e)]
    return examples[: cfg.train_limit] if cfg.train_limit else examples


def validation_examples(cfg: TrainConfig, task: Task, split_examples: list[Example]) -> list[Example]:
    """What the end of each epoch scores: the val split, or with --holdout the held-out slice of the
    train split (`split_examples`)."""
    if not cfg.holdout:
        return load_examples(task, "val", cfg.data_dir, limit=cfg.eval_limit)
    held = [e for e in split_examples if is_held_out(cfg, task, e)]
    if not held:
        raise TaskError(f"--holdout {cfg.holdout} leaves no validation example in the train split of {task.name}")
    return held[: cfg.eval_limit] if cfg.eval_limit else held


def unseen_holdout(cfg: TrainConfig, task: Task, data_dir: Path | None = None) -> list[Example]:
    """`dhrd evaluate --split holdout`: the run's held-out slice of train (its --holdout, else the
    DEFAULT_HOLDOUT slice), less every example the run could have trained on. A run trained without
    --holdout on its first --train-limit rows has never seen the slice's rows after those."""
    split = load_examples(task, "train", data_dir or cfg.data_dir)
    seen = {e.key for e in train_candidates(cfg, task, split)}
    fraction = cfg.holdout or DEFAULT_HOLDOUT
    held = [e for e in split if is_held_out(cfg, task, e, fraction) and e.key not in seen]
    if not held:
        raise TaskError(f"{task.name}: no example of the {fraction:g} held-out slice of train is unseen by this run "
                        "(it trained on all of them)")
    return held
