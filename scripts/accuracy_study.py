#!/usr/bin/env python3
"""Does the reasoning head pay? Seeded arms per track, one `dhrd train` + `dhrd evaluate` per
(track, arm, seed), one JSON row appended per finished run, and a report with mean ± std over seeds
and the paired-bootstrap 95 % interval of each arm's difference to the pooled baseline (α = 0).

    .venv/bin/python scripts/accuracy_study.py --tracks esnli --arms a0,a1 --seeds 0,1,2
    .venv/bin/python scripts/accuracy_study.py --report-only          # tables from the rows so far

Resumable: a finished run (its row in the rows file) is skipped; a killed run resumes from its last
checkpoint (`dhrd train --resume`). Honesty rules: every arm of a track has the same data, order (per
seed), steps and hyper-parameters, fixed in TRACKS before any result was seen; the model that is
scored is the last one (no checkpoint picked on the reported split); nothing is tuned on it.
"""
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # a script run as `python scripts/...`: the repo's packages (loadtest)
from loadtest.provenance import commit  # noqa: E402

BIN = Path(sys.executable).parent
# The `dhrd` command: the console script beside this interpreter (the README's .venv), or, where the
# package is only on the path (the GPU machine runs the checkout without installing it), `python -m dhrd`.
DHRD = [str(BIN / "dhrd")] if (BIN / "dhrd").exists() else [sys.executable, "-m", "dhrd"]

# Each track: a task whose rationales are trustworthy, a fixed train subset and the largest evaluation
# split we can afford on the CPU. e-SNLI/CQA: PaLM-540B rationales (distilling step-by-step), only rows
# whose PaLM answer matched the gold label; StrategyQA, CREAK: FLAN's human-written rationales.
TRACKS: dict[str, dict] = {
    "esnli": {"task": "esnli", "train_limit": 2000, "eval_limit": 2000, "epochs": 1},
    "strategyqa": {"task": "strategyqa", "train_limit": 1500, "eval_limit": None, "epochs": 2},
    # CREAK: claims to verify, FLAN's human rationales; train/val are a fixed hash split of one file.
    "creak": {"task": "creak", "train_limit": 2000, "eval_limit": None, "epochs": 1},
    "cqa": {"task": "cqa", "train_limit": 2000, "eval_limit": 1221, "epochs": 1},
}
# The paper's seven SuperGLUE tasks (Table 1), with the committed rationale sets (135M-teacher except
# COPA's human COPA-SSE and WSC's partly human WinoWhy). Caps fixed before any result, for the 2-core
# CPU: about 25-35 optimizer steps per task (CB: 2 epochs of its 250), scored on the official val split
# (BoolQ: our 970-row eval half of it; MultiRC: its first 800 answer rows, so its last question may be
# scored on part of its answers).
SUPERGLUE: dict[str, dict] = {  # in the paper's column order
    "boolq": {"task": "boolq", "train_limit": 400, "eval_limit": None, "epochs": 1},
    "cb": {"task": "cb", "train_limit": 250, "eval_limit": None, "epochs": 2},
    "copa": {"task": "copa", "train_limit": 400, "eval_limit": None, "epochs": 1},
    # WiC's and MultiRC's rationale sets cover a seeded sample of train: the first 3,228 MultiRC answer
    # rows hold 256 with a rationale, the first 1,070 WiC rows 400 (`--only-with-rationales` keeps those)
    "multirc": {"task": "multirc", "train_limit": 3228, "eval_limit": 800, "epochs": 1},
    "rte": {"task": "rte", "train_limit": 400, "eval_limit": None, "epochs": 1},
    "wic": {"task": "wic", "train_limit": 1070, "eval_limit": None, "epochs": 1},
    "wsc": {"task": "wsc", "train_limit": 554, "eval_limit": None, "epochs": 1},
}
TRACKS.update(SUPERGLUE)
# Rationale quality on one SuperGLUE task: WSC's 355 examples with a WinoWhy human reason, trained on
# those human reasons (a1) or on the embedded 135M teacher's label-conditioned ones for the same
# examples (a1-alt); a0 trains the same 355 examples without rationales.
TRACKS["wsc-winowhy"] = {"task": "wsc", "train_limit": 554, "eval_limit": None, "epochs": 1,
                         "rationales": {"file": "wsc.train.jsonl", "teacher": "import:winowhy-human"},
                         "alt_rationales": {"file": "wsc.smollm2.train.jsonl"}}
# Arms with α>0 name their LM span: the study compares 'all' (the paper's Eq. 3, what every arm used until
# the ablation) with 'suffix' (now `dhrd train`'s default), and a row must mean what it meant when it ran.
ARMS: dict[str, list[str]] = {
    "a0": ["--alpha", "0"],  # the pooled baseline
    "a0.3": ["--alpha", "0.3", "--beta", "1", "--lm-span", "all"],
    "a1": ["--alpha", "1", "--beta", "1", "--lm-span", "all"],
    # α=0 trained twice as long: about α=1's tokens and wall time (the "equal time" comparison)
    "a0-2x": ["--alpha", "0", "--epochs-multiplier", "2"],
    # α=1 for the same two epochs: does the reasoning head pay once the baseline is better trained?
    "a1-2x": ["--alpha", "1", "--beta", "1", "--lm-span", "all", "--epochs-multiplier", "2"],
    # at the best α only, if it beats α=0: the LM span over rationale + answer, and shuffled rationales
    "a1-suffix": ["--alpha", "1", "--lm-span", "suffix"],
    "a1-shuffled": ["--alpha", "1", "--lm-span", "all", "--shuffled-rationales"],
    # the same two ablations at two epochs, where α=1 leads α=0 (a0-2x) by its paired interval over examples
    "a1-2x-suffix": ["--alpha", "1", "--lm-span", "suffix", "--epochs-multiplier", "2"],
    "a1-2x-shuffled": ["--alpha", "1", "--lm-span", "all", "--shuffled-rationales", "--epochs-multiplier", "2"],
    # α=0 for three epochs: about the wall time of a1-2x-suffix (the LM loss on fewer positions is cheaper)
    "a0-3x": ["--alpha", "0", "--epochs-multiplier", "3"],
    # the LM-span arm for the same three epochs: the budget the held-out slice of train chose for α=0
    # (scripts/select_budget.py), so each arm is compared at the epochs selected without the reported split
    "a1-3x-suffix": ["--alpha", "1", "--lm-span", "suffix", "--epochs-multiplier", "3"],
    # the track's other rationale set for the same examples (a teacher comparison)
    "a1-alt": ["--alpha", "1", "--beta", "1", "--lm-span", "all", "--alt-rationales"],
}
# Comparisons beside "each arm against α=0 at the track's epochs": (arm, baseline, what it answers).
OTHER_PAIRS: list[tuple[str, str, str]] = [
    ("a1", "a0-2x", "equal wall time: α=1 against α=0 trained twice as many steps"),
    ("a1-2x", "a0-2x", "equal steps at twice the epochs: α=1 against α=0"),
    ("a1-2x-suffix", "a0-2x", "LM loss on rationale + answer only, against α=0 at two epochs"),
    ("a1-2x-suffix", "a0-3x", "equal wall time: the LM-span arm against α=0 trained three epochs"),
    ("a1-3x-suffix", "a0-3x", "equal steps at three epochs, the budget chosen on held-out train"),
    ("a1-2x-suffix", "a1-2x", "LM loss on rationale + answer only, against the whole sequence (Eq. 3)"),
    ("a1-suffix", "a1", "LM loss on rationale + answer only, against the whole sequence (Eq. 3)"),
    ("a1-2x-shuffled", "a0-2x", "shuffled rationales, against α=0 at two epochs"),
    ("a1-2x-shuffled", "a1-2x", "shuffled against aligned rationales: is the gain reasoning or regularisation?"),
]
DEFAULT_ROWS = REPO / "reports" / "accuracy" / "rows.jsonl"


def machine() -> dict:
    """loadtest.provenance's machine, plus what trained (torch, device)."""
    import torch

    from loadtest.provenance import machine as host

    return {**host(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


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


def train_args(name: str, arm: str, seed: int, run: Path) -> list[str]:
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
    return dhrd_train(track, run, seed, epochs, "--eval-limit", "64", *flags)


def dhrd_train(track: dict, run: Path, seed: int, epochs: int, *flags: str) -> list[str]:
    """`dhrd train` on a track's fixed train subset (the same examples for every arm and seed), resumable."""
    return [*DHRD, "train", "--task", track["task"], "--out", str(run), "--seed", str(seed),
            "--train-limit", str(track["train_limit"]), "--only-with-rationales", "--epochs", str(epochs),
            "--eval-batch-size", "32", "--no-progress", "--resume", *flags]


def run_one(name: str, arm: str, seed: int, runs: Path, rows_path: Path) -> dict:
    run = runs / name / f"{arm}-s{seed}"
    track = TRACKS[name]
    cmd = train_args(name, arm, seed, run)
    started = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    trained = time.time() - started
    evaluate = [*DHRD, "evaluate", str(run), "--split", "val", "--checkpoint", "last",
                "--batch-size", "32", *(["--limit", str(track["eval_limit"])] if track["eval_limit"] else [])]
    subprocess.run(evaluate, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    where = machine()
    predictions = keep_predictions(run / "eval" / "val.predictions.jsonl", rows_path.parent / "predictions" / name
                                   / f"{arm}-s{seed}.{row_device({'machine': where})}.jsonl.gz")
    summary = json.loads((run / "summary.json").read_text())
    evaluated = json.loads((run / "eval" / "val.metrics.json").read_text())
    row = {"track": name, "arm": arm, "seed": seed, "task": track["task"], "metrics": evaluated["metrics"],
           "train_examples": summary["data"]["train_examples"],
           "examples": evaluated["examples"], "steps": summary["steps"], "train_tokens": summary["tokens"],
           "train_wall_s": training_seconds(run, trained),
           "predictions": str(predictions.relative_to(REPO)) if predictions.is_relative_to(REPO) else str(predictions),
           "train_command": shlex.join(relative(cmd)), "eval_command": shlex.join(relative(evaluate)),
           "machine": where,
           "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M")}
    append_row(rows_path, row)
    return row


def append_row(rows_path: Path, row: dict) -> None:
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


# --- report ----------------------------------------------------------------------------------------
def correct(path: Path) -> dict[str, bool]:
    return {r["key"]: r["pred"] == r["gold"] for r in read_predictions(path)}


def paired_ci(arm_runs: list[dict[str, bool]], base_runs: list[dict[str, bool]], resamples: int = 5000,
              seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of (arm − baseline) accuracy, and its 95 % bootstrap interval resampling examples
    (the same resampled examples for every seed pair, so seed and example variation both count)."""
    keys = sorted(set.intersection(*(set(r) for r in arm_runs + base_runs)))
    diffs = [[int(a[k]) - int(b[k]) for k in keys] for a, b in zip(arm_runs, base_runs)]
    per_example = [sum(d[i] for d in diffs) / len(diffs) for i in range(len(keys))]
    rng, n = random.Random(seed), len(keys)
    boot = sorted(sum(per_example[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(per_example) / n, boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]


def plot(gains: list[tuple], out: Path) -> None:
    """Δ accuracy vs α=0 (or the baseline a label names after "vs") per (track, arm): the 95 % interval
    over examples, and beside it, where a track has two or more seeds, the wider one that resamples
    seeds too (the honest one with few seeds).
    Each gain is (label, Δ, lo, hi) or (label, Δ, lo, hi, seeds_lo, seeds_hi)."""
    if not gains:
        return
    try:
        import matplotlib
    except ImportError:  # the GPU machine has no matplotlib; the plot is redrawn where the rows are merged
        print(f"[study] matplotlib is not installed: {out} not redrawn", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(gains), 3.4))
    for x, (label, d, lo, hi, *seeds) in enumerate(gains):
        ax.errorbar([x], [100 * d], yerr=[[100 * (d - lo)], [100 * (hi - d)]], fmt="o", capsize=4, color="C0")
        if seeds and seeds[0] is not None:
            slo, shi = seeds
            ax.errorbar([x + 0.2], [100 * d], yerr=[[100 * (d - slo)], [100 * (shi - d)]], fmt="s", capsize=4,
                        color="C1")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(gains)), [g[0] for g in gains], rotation=30, ha="right")
    ax.set_ylabel("Δ accuracy (points)")
    ax.set_title("vs α=0 unless the label says 'vs', 95 % CI: over examples (blue, circles); seeds resampled too (orange, squares)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def seed_and_example_ci(arm_runs: list[dict[str, bool]], base_runs: list[dict[str, bool]], resamples: int = 5000,
                        seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean difference when seeds are resampled too (a hierarchical bootstrap):
    with few seeds and a seed-sensitive arm this is the honest width; `paired_ci` holds seeds fixed."""
    keys = sorted(set.intersection(*(set(r) for r in arm_runs + base_runs)))
    diffs = [[int(a[k]) - int(b[k]) for k in keys] for a, b in zip(arm_runs, base_runs)]
    rng, n, k = random.Random(seed), len(keys), len(diffs)
    boot = []
    for _ in range(resamples):
        picked = [diffs[rng.randrange(k)] for _ in range(k)]
        idx = [rng.randrange(n) for _ in range(n)]
        boot.append(sum(d[i] for d in picked for i in idx) / (n * k))
    boot.sort()
    return boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]


def difference(pairs: list[tuple[dict, dict]], track: str, label: str, device: str,
               gains: list) -> tuple[str, str, str]:
    """Table cells for (baseline run, arm run) seed pairs: the paired difference with its interval over
    examples, the per-seed differences, and the interval with the seeds resampled too; the plot's
    entry goes to `gains`."""
    if not pairs:
        return "—", "—", "—"
    arm_c = [correct(REPO / r["predictions"]) for _, r in pairs]
    base_c = [correct(REPO / b["predictions"]) for b, _ in pairs]
    d, lo, hi = paired_ci(arm_c, base_c)
    per_seed = ", ".join(f"{100 * (r['metrics']['accuracy'] - b['metrics']['accuracy']):+.1f}" for b, r in pairs)
    wlo = whi = None
    wide = "—"
    if len(pairs) > 1:
        wlo, whi = seed_and_example_ci(arm_c, base_c)
        wide = f"[{100 * wlo:+.2f}, {100 * whi:+.2f}]"
    gains.append((f"{track} {label}{' GPU' * (device != 'cpu')} ({len(pairs)} seed{'s' * (len(pairs) > 1)})",
                  d, lo, hi, wlo, whi))
    return f"{100 * d:+.2f} pts [{100 * lo:+.2f}, {100 * hi:+.2f}] ({len(pairs)} pairs)", per_seed, wide


def other_pairs(track_rows: list[dict], track: str, device: str, gains: list) -> list[str]:
    """The OTHER_PAIRS both of whose arms this track ran, as a small table of its own."""
    lines = []
    for arm, baseline, question in OTHER_PAIRS:
        pairs = seed_pairs(track_rows, track, arm, baseline)
        if not pairs:
            continue
        delta, per_seed, wide = difference(pairs, track, f"{arm} vs {baseline}", device, gains)
        lines.append(f"| {arm} − {baseline} | {question} | {delta} | {per_seed} | {wide} |")
    if not lines:
        return []
    return ["", "| pair | question | Δ (paired, 95 % CI over examples) | per-seed Δ | 95 % CI, seeds resampled too |",
            "|---|---|---|---|---|", *lines]


def report(rows: list[dict], gains: list | None = None) -> str:
    gains = [] if gains is None else gains
    lines = []
    for name, device in dict.fromkeys((r["track"], row_device(r)) for r in rows):
        track_rows = [r for r in rows if r["track"] == name and row_device(r) == device]
        by_seed = sorted(track_rows, key=lambda r: r["seed"])  # per-seed differences read seed 0, 1, 2
        on = "" if device == "cpu" else f", on {track_rows[0]['machine']['device']}"
        t = TRACKS.get(name, {})
        trained = track_rows[0].get("train_examples", f"the first {t.get('train_limit')} rows'")
        lines += [f"### {name}{on} (train {trained} examples with rationales, {t.get('epochs')} epoch(s); "
                  f"evaluated on {len(correct(REPO / track_rows[0]['predictions']))} held-out examples)", "",
                  "| arm | seeds | accuracy mean ± std | Δ vs α=0 (paired, 95 % CI over examples) | per-seed Δ "
                  "| 95 % CI, seeds resampled too | steps | train tokens | train wall s (median) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        order = list(ARMS)  # the table reads baseline, α=0.3, α=1, then the equal-time and ablation arms
        for arm in sorted(dict.fromkeys(r["arm"] for r in track_rows),
                          key=lambda a: order.index(a) if a in order else len(order)):
            runs = sorted((r for r in track_rows if r["arm"] == arm), key=lambda r: r["seed"])
            accs = [r["metrics"]["accuracy"] for r in runs]
            spread = f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else f"{accs[0]:.4f}"
            delta, per_seed, wide = (("—", "—", "—") if arm == "a0"
                                     else difference(seed_pairs(by_seed, name, arm), name, arm, device, gains))
            mean = lambda k: statistics.mean(r[k] for r in runs)  # noqa: E731
            lines.append(f"| {arm} | {len(runs)} | {spread} | {delta} | {per_seed} | {wide} | {mean('steps'):.0f} "
                         f"| {mean('train_tokens'):,.0f} | {statistics.median(r['train_wall_s'] for r in runs):.0f} |")
        lines += other_pairs(by_seed, name, device, gains)
        m = track_rows[0]["machine"]
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}; commits "
                      f"{sorted({r['commit'] for r in track_rows})}; dates {track_rows[0]['date']} … {track_rows[-1]['date']}.",
                  ""]
    return "\n".join(lines)


# The paper's Table 1 rows (PAPER.md), printed beside ours: 3-8B backbones, Gemini 2.5 Flash rationales.
PAPER_TABLE1: list[tuple[str, str, dict[str, str], str, str]] = [  # model, setting, cells, Avg, Rel.Δ
    ("Llama-3.2-3B", "pooled baseline", {"boolq": "89.0", "cb": "78.6/88.8", "copa": "72.2", "multirc": "83.5/49.8",
                                         "rte": "84.3", "wic": "68.1", "wsc": "77.4"}, "77.34", "—"),
    ("Llama-3.2-3B", "DHRD α=β=1", {"boolq": "89.2", "cb": "73.8/87.2", "copa": "89.2", "multirc": "85.9/55.3",
                                    "rte": "87.7", "wic": "73.0", "wsc": "80.8"}, "81.57", "+5.47 %"),
    ("Llama-3.1-8B", "pooled baseline", {"boolq": "90.7", "cb": "81.9/90", "copa": "93.8", "multirc": "88.9/62.9",
                                         "rte": "91.4", "wic": "74.8", "wsc": "91.5"}, "86.29", "—"),
    ("Llama-3.1-8B", "DHRD α=β=1", {"boolq": "91.1", "cb": "89.0/94.8", "copa": "95.4", "multirc": "89.0/63.7",
                                    "rte": "92.2", "wic": "74.6", "wsc": "91.1"}, "87.52", "+1.43 %"),
]


def cell(task: str, metrics: list[dict]) -> str:
    """A Table 1 cell: the official metric(s) in points, mean over seeds (CB: F1/Acc, MultiRC: F1a/EM)."""
    mean = lambda k: 100 * statistics.mean(m[k] for m in metrics)  # noqa: E731
    if task == "cb":
        return f"{mean('f1_macro'):.1f}/{mean('accuracy'):.1f}"
    if task == "multirc":
        return f"{mean('f1a'):.1f}/{mean('em'):.1f}"
    return f"{mean('accuracy'):.1f}"


def majority_metrics(task_name: str, predictions: Path) -> dict:
    """The official metrics of always answering the most common gold label of the scored examples."""
    from contract.tasks import Example, get_task
    from training.evaluate import compute_metrics

    task = get_task(task_name)
    rows = read_predictions(predictions)
    # MultiRC keys are <passage>/<question>/<answer>: the question is the EM group
    examples = [Example(r["key"], {}, task.labels.index(r["gold"]), r["key"].rsplit("/", 1)[0]) for r in rows]
    common = statistics.mode(e.label for e in examples)
    return compute_metrics(task, examples, [common] * len(examples))


def seed_pairs(rows: list[dict], track: str, arm: str, baseline: str = "a0") -> list[tuple[dict, dict]]:
    """(`baseline` run, `arm` run) of a track for every seed both ran, in the arm's row order."""
    base = {r["seed"]: r for r in rows if r["track"] == track and r["arm"] == baseline}
    return [(base[r["seed"]], r) for r in rows if r["track"] == track and r["arm"] == arm and r["seed"] in base]


def superglue_average_ci(rows: list[dict], arm: str = "a1", resamples: int = 2000,
                         seed: int = 0) -> tuple[float, float, float, float, float, float]:
    """The paper's macro-average difference (`arm` − α=0, in points) and its relative change, each with a
    95 % interval from a bootstrap that resamples, within every task, the seed pairs and the scored
    examples (MultiRC: whole questions, since its EM is per question). Tasks are held fixed: the
    average is over these seven."""
    from contract.tasks import Example, get_task
    from training.evaluate import compute_metrics

    tasks = []
    for name in SUPERGLUE:
        task = get_task(SUPERGLUE[name]["task"])
        pairs = seed_pairs(rows, name, arm)
        runs = [[{p["key"]: p for p in read_predictions(REPO / r["predictions"])} for r in pair] for pair in pairs]
        keys = sorted(set.intersection(*(set(run) for pair in runs for run in pair)))
        first = runs[0][0]
        examples = [Example(k, {}, task.labels.index(first[k]["gold"]), k.rsplit("/", 1)[0]) for k in keys]
        preds = [[[task.labels.index(run[k]["pred"]) for k in keys] for run in pair] for pair in runs]
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(examples):
            groups.setdefault(e.group if name == "multirc" else e.key, []).append(i)
        tasks.append((task, examples, preds, list(groups.values())))

    def average(picks: list[tuple[list[int], list[int]]]) -> tuple[float, float]:
        """Macro-average of (α=0, arm) over tasks, each the mean over its picked seed pairs."""
        sums = [0.0, 0.0]
        for (task, examples, preds, _), (pair_idx, idx) in zip(tasks, picks):
            subset = [examples[i] for i in idx]
            for side in (0, 1):
                sums[side] += statistics.mean(compute_metrics(task, subset, [preds[p][side][i] for i in idx])["score"]
                                              for p in pair_idx) / len(tasks)
        return 100 * sums[0], 100 * sums[1]

    b0, b1 = average([(list(range(len(preds))), list(range(len(examples)))) for _, examples, preds, _ in tasks])
    rng, diffs, rels = random.Random(seed), [], []
    for _ in range(resamples):
        picks = []
        for _, _, preds, clusters in tasks:
            chosen = [rng.randrange(len(clusters)) for _ in clusters]
            picks.append(([rng.randrange(len(preds)) for _ in preds], [i for c in chosen for i in clusters[c]]))
        a0, a1 = average(picks)
        diffs.append(a1 - a0)
        rels.append(100 * (a1 / a0 - 1))
    diffs.sort(), rels.sort()
    lo, hi = int(0.025 * resamples), int(0.975 * resamples) - 1
    return b1 - b0, diffs[lo], diffs[hi], 100 * (b1 / b0 - 1), rels[lo], rels[hi]


def superglue_table(rows: list[dict], arm: str = "a1") -> str:
    """Our Table 1: per task α=0 and `arm` (mean over seeds), the majority-class line, and the paper's macro
    average (CB and MultiRC averaged over their two metrics first) with the relative change."""
    tasks = [t for t in SUPERGLUE if any(r["track"] == t for r in rows)]
    if not tasks:
        return ""
    devices = {r.get("machine", {}).get("device", "cpu") for r in rows if r["track"] in tasks}
    device = "" if devices == {"cpu"} else ", ".join(sorted(devices))
    head = "| model | setting | " + " | ".join(f"{t} ({'F1/Acc' if t == 'cb' else 'F1a/EM' if t == 'multirc' else 'Acc'})"
                                              for t in tasks) + " | Avg | Rel.Δ |"
    lines = [f"### SuperGLUE, beside the paper's Table 1{f' ({device})' * bool(device)}", "", head, "|" + "---|" * (len(tasks) + 4)]

    def runs(task: str, name: str) -> list[dict]:
        """A task's runs of one arm; once both arms have runs, only the seed pairs (as the interval below:
        a seed only one arm ran would tilt the averages)."""
        pairs = seed_pairs(rows, task, arm)
        if pairs:
            return [pair[0 if name == "a0" else 1] for pair in pairs]
        return [r for r in rows if r["track"] == task and r["arm"] == name]

    complete = all(runs(t, "a0") and runs(t, arm) for t in tasks) and len(tasks) == len(SUPERGLUE)
    averages = {}
    for name, label in (("a0", "pooled baseline (α=0)"), (arm, f"DHRD ({' '.join(ARMS[arm])})")):
        cells, scores = [], []
        for t in tasks:
            rs = runs(t, name)
            cells.append(f"{cell(t, [r['metrics'] for r in rs])} ({len(rs)})" if rs else "—")
            if rs:
                scores.append(100 * statistics.mean(r["metrics"]["score"] for r in rs))
        averages[name] = statistics.mean(scores) if complete else None
        avg = f"{averages[name]:.2f}" if complete else "—"
        rel = f"{100 * (averages[name] / averages['a0'] - 1):+.2f} %" if complete and name != "a0" else "—"
        lines.append(f"| SmolLM2-135M (ours{f', {device}' * bool(device)}) | {label} | " + " | ".join(cells) + f" | {avg} | {rel} |")
    majority, scores = [], []
    for t in tasks:
        m = majority_metrics(t, REPO / runs(t, "a0")[0]["predictions"]) if runs(t, "a0") else None
        majority.append(cell(t, [m]) if m else "—")
        scores.append(100 * m["score"] if m else 0.0)
    avg = f"{statistics.mean(scores):.2f}" if complete else "—"
    lines.append("| — | majority class of the scored examples | " + " | ".join(majority) + f" | {avg} | — |")
    for model, setting, cells_by_task, avg, rel in PAPER_TABLE1:
        lines.append(f"| {model} (paper) | {setting} | " + " | ".join(cells_by_task[t] for t in tasks)
                     + f" | {avg} | {rel} |")
    lines += ["", "Ours: mean over the seeds in brackets, official SuperGLUE val split (capped where SUPERGLUE "
              "says); the paper's: its Table 1 (3-8B backbones, Gemini 2.5 Flash rationales, full train sets).", ""]
    if complete:
        d, lo, hi, rel, rlo, rhi = superglue_average_ci(rows, arm)
        lines += [f"Average difference, {arm} − α=0: {d:+.2f} points, 95 % CI [{lo:+.2f}, {hi:+.2f}]; relative "
                  f"{rel:+.2f} %, 95 % CI [{rlo:+.2f}, {rhi:+.2f}] % (bootstrap over each task's seed pairs and "
                  "scored examples, MultiRC by question).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", default="esnli")
    parser.add_argument("--arms", default="a0,a0.3,a1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", type=Path, default=DEFAULT_ROWS)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "study")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--merge", type=Path, default=None, metavar="DIR",
                        help="add the runs another machine finished (DIR: the tree scripts/gpu_study.sh returned, "
                             "holding reports/accuracy/), then rebuild the report")
    parser.add_argument("--padding", action="store_true",
                        help="print the padding share of each (track, arm)'s first epoch of batches, train nothing")
    args = parser.parse_args()
    if args.padding:
        for track in args.tracks.split(","):
            for arm in args.arms.split(","):
                print(json.dumps(padding_waste(track, arm)), flush=True)
        return 0
    if args.merge:
        for r in merge_rows(args.merge, args.rows):
            print(f"[study] merged {r['track']} {r['arm']} seed {r['seed']} on {r['machine']['device']}", flush=True)
    elif not args.report_only:
        here = row_device({"machine": machine()})  # a GPU's runs are its own: CPU rows don't count as done
        done = {(r["track"], r["arm"], r["seed"]) for r in read_rows(args.rows) if row_device(r) == here}
        plan = [(t, a, int(s)) for s in args.seeds.split(",") for t in args.tracks.split(",")
                for a in args.arms.split(",")]  # seed-major: every arm gets seed 0 before any gets seed 1
        for i, (track, arm, seed) in enumerate(plan, 1):
            if (track, arm, seed) in done:
                continue
            print(f"[study] {i}/{len(plan)}: {track} {arm} seed {seed}", flush=True)
            row = run_one(track, arm, seed, args.runs, args.rows)
            print(f"[study] {track} {arm} seed {seed}: accuracy {row['metrics']['accuracy']:.4f} "
                  f"({row['train_wall_s']:.0f} s training)", flush=True)
    gains: list = []
    rows = read_rows(args.rows)
    text = report(rows, gains) + "\n" + "\n".join(
        superglue_table([r for r in rows if row_device(r) == device]) for device in dict.fromkeys(map(row_device, rows)))
    out = args.rows.with_name("report.md")
    out.write_text(text + "\n")
    plot(gains, args.rows.with_name("gains.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
