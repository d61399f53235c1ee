"""Running the study: one `dhrd train` + `dhrd evaluate` per (track, arm, seed), one JSON row appended per
finished run with its per-example predictions kept beside it (gzip), resumable, and merging another
machine's rows (scripts/gpu_study.sh)."""
from __future__ import annotations

import argparse
import gzip
import json
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.provenance import commit, machine

from .tracks import ARMS, CONFIRMATION, TRACKS

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The `dhrd` command: the console script beside this interpreter (the README's .venv), or, where the
# package is only on the path (the GPU machine runs the checkout without installing it), `python -m dhrd`.
DHRD = [str(BIN / "dhrd")] if (BIN / "dhrd").exists() else [sys.executable, "-m", "dhrd"]
DEFAULT_ROWS = REPO / "reports" / "accuracy" / "rows.jsonl"


def at_repo(path: str | Path) -> Path:
    """A path a row records (relative to the repository) as a file here."""
    return REPO / path


def row_machine() -> dict:
    """A row's `machine`: loadtest.provenance's machine (without its CPU flags: the rows' schema is fixed),
    plus what trained: torch, the device, and whether that device runs bf16 matmuls natively (on a CPU
    without AVX-512 BF16 or AMX they are emulated, and `auto` picks fp32)."""
    import torch

    from contract.model import native_bf16

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {**machine(flags=False), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "bf16_native": native_bf16(device)}


class StudyError(RuntimeError):
    """A run or row the study's committed plan does not allow; raised before any time is spent on it."""


def row_precision(row: dict) -> str:
    """The precision a row's run trained and scored in. Rows written before it was recorded (all before
    2026-12-07) ran under bf16 autocast: the study's code of the time always trained that way."""
    return row.get("precision", "bf16")


def check_planned(name: str, cmd: list[str], trained_from: str) -> None:
    """The confirmation split is scored only as its amended plan says (TRAINING.md, Amendment 1): trained
    with `--precision fp32` passed explicitly, from a clean checkout whose commit the row can name."""
    if TRACKS[name].get("split") != "confirm":
        return
    last = len(cmd) - 1 - cmd[::-1].index("--precision") if "--precision" in cmd else None  # argparse: last wins
    if last is None or cmd[last + 1:last + 2] != ["fp32"]:
        raise StudyError(f"{name}: a confirmation run must train with --precision fp32 (Amendment 1)")
    if trained_from.endswith("-dirty") or trained_from == "unknown":
        raise StudyError(f"{name}: a confirmation run must train from a clean commit, not {trained_from!r} "
                         "(run it from the pinned worktree: scripts/confirmation.sh)")


def done_runs(rows: list[dict], device: str, precision: str | None, holdout: bool = False) -> set[tuple[str, str, int]]:
    """(track, arm, seed) of the runs the study skips: rows from this kind of `device` (a GPU's rows do not
    count on a CPU); in the precision the track names (the confirmation), else `precision` when given;
    and with `holdout` (--holdout-scores) only rows that have holdout scores."""
    return {(r["track"], r["arm"], r["seed"]) for r in rows if row_device(r) == device
            and row_precision(r) == TRACKS.get(r["track"], {}).get("precision", precision or row_precision(r))
            and (not holdout or "holdout" in r)}


def check_row(row: dict) -> None:
    """The last guard before a row is written: a confirm-split row that is not fp32 is refused."""
    if row.get("split") == "confirm" and row_precision(row) != "fp32":
        raise StudyError(f"refusing a confirm-split row in {row_precision(row)!r}: the confirmation is fp32 only "
                         "(TRAINING.md, Amendment 1)")


def row_device(row: dict) -> str:
    """"cpu" or "cuda": rows from different devices are never paired or averaged together."""
    return "cpu" if row.get("machine", {}).get("device", "cpu") == "cpu" else "cuda"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def shuffled_rationales(track: dict, out: Path, seed: int) -> Path:
    """The track's rationale file with rationales permuted across examples (labels kept): the paper's
    alignment ablation. If these help as much, the gain is regularisation, not reasoning."""
    from training.rationales.rows import default_rationale_file, read_rows
    from contract.tasks import get_task

    rows = [row for _, row in read_rows(default_rationale_file(get_task(track["task"])))]
    texts = [r["rationale"] for r in rows]
    random.Random(seed).shuffle(texts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({**r, "rationale": t}) + "\n" for r, t in zip(rows, texts)))
    return out


def rationale_subset(spec: dict, out: Path, keys: set[str] | None = None) -> tuple[Path, set[str]]:
    """A committed set cut to one teacher's rows (`spec["teacher"]`, if given) and to `keys` (if given),
    written to `out`; returns the file and the keys it holds."""
    from training.rationales.rows import read_rows

    rows = [row for _, row in read_rows(REPO / "data" / "rationales" / spec["file"])
            if ("teacher" not in spec or row.get("teacher") == spec["teacher"]) and (keys is None or row["key"] in keys)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, {r["key"] for r in rows}


def track_rationales(name: str, run: Path, alt: bool) -> list[str]:
    """`--rationales FILE` for a track with its own rationale set (or its alternative set, cut to the same
    examples), so every arm trains the same examples; nothing for a track on the committed default set."""
    track = TRACKS[name]
    if "rationales" not in track:
        return []
    main, keys = rationale_subset(track["rationales"], run.parent / "rationales.jsonl")
    if alt:
        main, _ = rationale_subset(track["alt_rationales"], run.parent / "alt-rationales.jsonl", keys)
    return ["--rationales", str(main)]


def train_args(name: str, arm: str, seed: int, run: Path, precision: str | None = None) -> list[str]:
    track = TRACKS[name]
    flags = list(ARMS[arm])
    alt = "--alt-rationales" in flags
    if alt:
        flags.remove("--alt-rationales")
    flags += track_rationales(name, run, alt)
    epochs = track["epochs"]
    if "--epochs-multiplier" in flags:
        i = flags.index("--epochs-multiplier")
        epochs *= int(flags[i + 1])
        del flags[i:i + 2]
    if "--shuffled-rationales" in flags:
        flags.remove("--shuffled-rationales")
        flags += ["--rationales", str(shuffled_rationales(track, run.parent / f"shuffled-s{seed}.jsonl", seed))]
    # in-training validation on a small slice only (it costs time and picks nothing: 'last' is scored)
    if "precision" in track:  # the confirmation names its precision (Amendment 1): never left to `auto`
        flags += ["--precision", track["precision"]]
    elif precision is not None:  # the precision study (TRAINING.md, "Precision"): the same run in each
        flags += ["--precision", precision]
    return dhrd_train(track, run, seed, epochs, "--eval-limit", "64", *flags)


def dhrd_train(track: dict, run: Path, seed: int, epochs: int, *flags: str) -> list[str]:
    """`dhrd train` on a track's fixed train subset (the same examples for every arm and seed), resumable."""
    return [*DHRD, "train", "--task", track["task"], "--out", str(run), "--seed", str(seed),
            "--train-limit", str(track["train_limit"]), "--only-with-rationales", "--epochs", str(epochs),
            "--eval-batch-size", "32", "--no-progress", "--resume", *flags]


def run_one(name: str, arm: str, seed: int, runs: Path, rows_path: Path, precision: str | None = None,
            holdout: bool = False) -> dict:
    """Train and score one run; its row is appended to `rows_path`. `precision` (bf16, fp32) is passed to
    `dhrd train` for a track that names none, and then also names the run directory and the kept
    predictions, which sit beside the same run in the precision `auto` picked. `holdout`: also score the
    held-out slice of train the run never saw (`dhrd evaluate --split holdout`), kept and recorded under
    the row's "holdout"."""
    track = TRACKS[name]
    precision = None if "precision" in track else precision
    tag = f"-{precision}" if precision else ""
    run = runs / name / f"{arm}-s{seed}{tag}"
    cmd = train_args(name, arm, seed, run, precision)
    trained_from = commit()
    check_planned(name, cmd, trained_from)
    started = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    trained = time.time() - started
    split = track.get("split", "val")
    evaluate = [*DHRD, "evaluate", str(run), "--split", split, "--checkpoint", "last",
                "--batch-size", "32", *(["--limit", str(track["eval_limit"])] if track["eval_limit"] else [])]
    subprocess.run(evaluate, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    where = row_machine()
    predictions = keep_predictions(run / "eval" / f"{split}.predictions.jsonl", rows_path.parent / "predictions" / name
                                   / f"{arm}-s{seed}{tag}.{row_device({'machine': where})}.jsonl.gz")
    summary = json.loads((run / "summary.json").read_text())
    # `dhrd train` writes the precision it resolved ('auto' included) into config.json; evaluate scores in it
    precision = json.loads((run / "config.json").read_text())["precision"]
    evaluated = json.loads((run / "eval" / f"{split}.metrics.json").read_text())
    row = {"track": name, "arm": arm, "seed": seed, "task": track["task"], "split": split,
           "precision": precision, "metrics": evaluated["metrics"],
           "train_examples": summary["data"]["train_examples"],
           "examples": evaluated["examples"], "steps": summary["steps"], "train_tokens": summary["tokens"],
           "train_wall_s": training_seconds(run, trained),
           "predictions": recorded_path(predictions, rows_path),
           "train_command": shlex.join(relative(cmd)), "eval_command": shlex.join(relative(evaluate)),
           "machine": where,
           "commit": trained_from, "date": time.strftime("%Y-%m-%d %H:%M")}
    if holdout:
        row["holdout"] = score_holdout(run, rows_path, name, f"{arm}-s{seed}{tag}", where)
    append_row(rows_path, row)
    return row


def score_holdout(run: Path, rows_path: Path, name: str, stem: str, where: dict) -> dict:
    """Score `run` on the held-out slice of train it never saw; keep its predictions beside the rows."""
    evaluate = [*DHRD, "evaluate", str(run), "--split", "holdout", "--checkpoint", "last", "--batch-size", "32"]
    subprocess.run(evaluate, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    kept = keep_predictions(run / "eval" / "holdout.predictions.jsonl", rows_path.parent / "predictions" / name
                            / f"{stem}.holdout.{row_device({'machine': where})}.jsonl.gz")
    scored = json.loads((run / "eval" / "holdout.metrics.json").read_text())
    return {"metrics": scored["metrics"], "examples": scored["examples"], "predictions": recorded_path(kept, rows_path),
            "eval_command": shlex.join(relative(evaluate))}


def recorded_path(path: Path, rows_path: Path) -> str:
    """A kept file as the row records it: relative to the repository that holds the rows file (which is not
    this checkout when a pinned worktree writes into main's reports/accuracy/), else to this checkout."""
    folder = rows_path.resolve().parent
    root = folder.parents[1] if folder.parts[-2:] == ("reports", "accuracy") else REPO
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else str(path)


def append_row(rows_path: Path, row: dict) -> None:
    check_row(row)
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    with rows_path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def keep_predictions(source: Path, kept: Path) -> Path:
    """Copy a run's per-example predictions beside the rows (gzip, a few hundred kB per run), so the report's
    paired intervals can be recomputed from the repository: run directories are local and not committed."""
    kept.parent.mkdir(parents=True, exist_ok=True)
    tmp = kept.with_name(kept.name + ".tmp")  # written whole, then renamed: a kill leaves no half file
    tmp.write_bytes(gzip.compress(source.read_bytes(), mtime=0))  # mtime=0: same predictions, same bytes
    tmp.replace(kept)
    return kept


def read_predictions(path: Path) -> list[dict]:
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def merge_rows(other_root: Path, rows_path: Path) -> list[dict]:
    """Append another machine's finished runs (its checkout's rows file and kept predictions, as
    scripts/gpu_study.sh brings them back under `other_root`) to ours: rows we lack, by (track, arm,
    seed, device), with their predictions. Returns the rows added."""
    ours = {(r["track"], r["arm"], r["seed"], row_device(r)) for r in read_rows(rows_path)}
    theirs = read_rows(other_root / rows_path.relative_to(REPO))
    added = [r for r in theirs if (r["track"], r["arm"], r["seed"], row_device(r)) not in ours]
    for r in added:
        target = REPO / r["predictions"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((other_root / r["predictions"]).read_bytes())
    with rows_path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in added)
    return added


def confirmation_plan() -> list[tuple[str, str, int]]:
    """The confirmation's 20 runs in their committed order (Amendment 1): for each seed the primary pair,
    then the shuffled control for every seed, then the equal-wall-time arm for every seed."""
    return [(CONFIRMATION["track"], arm, int(seed)) for arms, seeds in CONFIRMATION["order"]
            for seed in seeds.split(",") for arm in arms.split(",")]


def commit_row(row: dict, rows_path: Path, i: int, total: int) -> str:
    """Commit one finished run (its row and kept predictions) in the repository that holds `rows_path`, and
    nothing else: `git commit -- paths` leaves whatever else is staged there alone. Retries while another
    git command holds the index lock. Returns the new commit's short hash."""
    root = rows_path.resolve().parents[2]
    paths = [str(rows_path.resolve().relative_to(root)), row["predictions"],
             *([row["holdout"]["predictions"]] if "holdout" in row else [])]
    message = (f"Study run {i}/{total}: {row['track']} {row['arm']} seed {row['seed']}, accuracy "
               f"{row['metrics']['accuracy']:.4f} ({row['precision']}, trained from {row['commit']}, "
               f"{row['train_wall_s']:.0f} s training)")
    for attempt in range(30):
        added = subprocess.run(["git", "add", "--", *paths], cwd=root, capture_output=True, text=True)
        done = added.returncode == 0 and subprocess.run(
            ["git", "commit", "--quiet", "-m", message, "--", *paths], cwd=root, capture_output=True,
            text=True).returncode == 0
        if done:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                  text=True).stdout.strip()
        time.sleep(2)  # index.lock held by another git command
    raise StudyError(f"could not commit {paths} in {root} (the row and predictions are written; commit them by hand)")


def esnli_rows_scored(rows_path: Path) -> dict:
    """Which e-SNLI test rows the rows file and every kept prediction file have scored: the check Amendment 1
    quotes (no confirm-split row, no e-SNLI key ≥ 2000 before the confirmation's first run)."""
    rows = read_rows(rows_path)
    keys = [p["key"] for f in sorted((rows_path.parent / "predictions").rglob("*.jsonl.gz"))
            for p in read_predictions(f) if p["key"].startswith("esnli/")]
    # Test-file keys are `esnli/N`; train keys (`esnli/valid-N`, rows of the released valid file, scored by
    # --holdout-scores) name no test row and are counted apart.
    test_rows = [int(k.removeprefix("esnli/")) for k in keys if k.removeprefix("esnli/").isdigit()]
    return {"rows": len(rows), "confirm_split_rows": sum(r.get("split") == "confirm" for r in rows),
            "esnli_predictions": len(test_rows), "esnli_max_key": max(test_rows, default=None),
            "esnli_keys_from_2000": sum(k >= 2000 for k in test_rows),
            "esnli_train_file_predictions": len(keys) - len(test_rows)}


def relative(cmd: list[str]) -> list[str]:
    """A command as someone in the repository would type it (no machine's absolute paths in reports)."""
    return [str(Path(a).relative_to(REPO)) if a.startswith(str(REPO) + "/") else a for a in cmd]


def training_seconds(run: Path, this_call: float) -> float:
    """Wall time of the training steps from the step log, or this call's time when there is no log.
    Robust to a run paused (killed, resumed later): a gap over 10x the median step is counted as one
    median step (the steps redone after the resume are in the log's later rows)."""
    times = [json.loads(line)["time"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "log.jsonl").exists() else []
    if len(times) < 2:
        return round(this_call, 1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    median = statistics.median(gaps)
    return round(median + sum(g if g <= 10 * median else median for g in gaps), 1)


def padding_waste(name: str, arm: str, seed: int = 0) -> dict:
    """Share of padding in one epoch of this arm's micro-batches, built by `dhrd train`'s own code from
    the same arguments: the measure of what packing or finer length grouping could still save."""
    from training.config import TrainConfig, add_train_arguments
    from training.data import load_examples
    from training.loop import Dist, epoch_batches, make_features
    from contract.encoding import load_tokenizer
    from contract.tasks import get_task
    from training.run_dir import resolve_backbone

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    argv = train_args(name, arm, seed, Path(tempfile.mkdtemp()) / name / f"{arm}-s{seed}")[2:]  # after `dhrd train`
    cfg = TrainConfig.from_args(parser.parse_known_args(argv)[0])
    tokenizer = load_tokenizer(resolve_backbone(cfg), cfg.trust_remote_code)
    task = get_task(cfg.task)
    feats, _ = make_features(cfg, task, tokenizer, load_examples(task, "train", cfg.data_dir))
    batches = epoch_batches(feats, cfg, 0, Dist())
    real = sum(len(feats[i].input_ids) for b in batches for i in b)
    padded = sum(len(b) * max(len(feats[i].input_ids) for i in b) for b in batches)
    return {"track": name, "arm": arm, "examples": len(feats), "real_tokens": real, "padded_tokens": padded,
            "waste": round(1 - real / padded, 4)}
