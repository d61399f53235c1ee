"""The study's report: per track, each arm against α = 0 and the named pairs, with seeds as the unit of
evidence (per-seed paired differences, a paired t-interval, exact tests: `statistics.py`) and the
bootstrap over examples as a secondary column; one-class runs flagged; the SuperGLUE table beside the
paper's Table 1, averaging only the tasks where no run answered one class."""
from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

from . import runs as _runs
from .runs import read_predictions, row_device, row_precision
from .statistics import (MIN_SEEDS_FOR_SIGNIFICANCE, ONE_CLASS_SHARE, SeedTest, answers_one_class, example_bootstrap,
                         seed_test)
from .tracks import ARMS, CONFIRMATION, OTHER_PAIRS, SUPERGLUE, TRACKS

# Where a track's scored split is one that choices were made on, the report says so in its heading.
SPLIT_NOTES = {
    "esnli": "the SELECTION split: e-SNLI test rows 0-1999, on which the LM span and the default were chosen",
    "esnli-confirm": "the CONFIRMATION split: e-SNLI test rows 2000-5999, scored once by the pre-registered plan",
}


# An "average" over one or two tasks is a per-task result under another name: none is printed below this.
MIN_INFORMATIVE_TASKS = 3


def predictions_of(row: dict) -> Path:
    return _runs.at_repo(row["predictions"])


def correct(path: Path) -> dict[str, bool]:
    return {r["key"]: r["pred"] == r["gold"] for r in read_predictions(path)}


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
    ax.set_title("vs α=0 unless the label says 'vs'; 95 %: paired t over seeds (orange, squares), "
                 "bootstrap over examples, seeds fixed (blue, circles)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def one_class(row: dict) -> bool:
    """Did this run give one answer to (nearly) every example?"""
    return answers_one_class([p["pred"] for p in read_predictions(predictions_of(row))])


def fmt_p(p: float) -> str:
    return "—" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else "<0.001"


def difference(pairs: list[tuple[dict, dict]], track: str, label: str, device: str,
               gains: list, primary: str | None = None) -> dict[str, str]:
    """Table cells for (baseline run, arm run) seed pairs, in points: per-seed differences, their mean with
    the paired t-interval over seeds and its p, the exact sign-flip p, a verdict, and the secondary
    bootstrap over examples; the plot's entry goes to `gains`. `primary` marks the confirmation's
    pre-registered pair: "deciding" (the block that decides: its p cells are one-sided and its verdict is
    the decision rule's, word for word as the verdict line) or "apart" (rows that decide nothing)."""
    if not pairs:
        return dict.fromkeys(("per_seed", "t", "p", "exact", "verdict", "examples"), "—")
    test = seed_test([100 * (r["metrics"]["accuracy"] - b["metrics"]["accuracy"]) for b, r in pairs])
    d, lo, hi = example_bootstrap([correct(predictions_of(r)) for _, r in pairs],
                                  [correct(predictions_of(b)) for b, _ in pairs])
    gains.append((f"{track} {label}{' GPU' * (device != 'cpu')} ({len(pairs)} seed{'s' * (len(pairs) > 1)})",
                  d, lo, hi, *((test.lo / 100, test.hi / 100) if test.n > 1 else (None, None))))
    if primary:
        return primary_cells(test, primary, d, lo, hi)
    if test.n < 2:
        verdict = "one seed: no test"
    elif test.n < MIN_SEEDS_FOR_SIGNIFICANCE:
        verdict = f"{test.n} seeds: too few to call"
    else:
        verdict = "significant" if test.significant else "not significant"
    t = (f"{test.mean:+.2f} [{test.lo:+.2f}, {test.hi:+.2f}]" if test.n > 1 else f"{test.mean:+.2f}")
    return {"per_seed": ", ".join(f"{x:+.1f}" for x in test.diffs), "t": t, "p": fmt_p(test.t_p),
            "exact": fmt_p(test.flip_p) if test.n > 1 else "—", "verdict": verdict,
            "examples": f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"}


def primary_cells(test: SeedTest, primary: str, d: float, lo: float, hi: float) -> dict[str, str]:
    """The primary pair's table cells: one-sided p values and the decision rule's verdict (`decided`)."""
    planned = len(CONFIRMATION["seeds"])
    if primary != "deciding":
        verdict = "reported apart: decides nothing (Amendment 1)"
    elif test.n < planned:
        verdict = f"{test.n} of {planned} seeds: no verdict yet"
    else:
        verdict = "CONFIRMED (one-sided rule)" if decided(test) else "NOT CONFIRMED (one-sided rule)"
    one_sided = lambda p: f"{fmt_p(p)} one-sided" if test.n > 1 else "—"  # noqa: E731
    t = f"{test.mean:+.2f} [{test.lo:+.2f}, {test.hi:+.2f}]" if test.n > 1 else f"{test.mean:+.2f}"
    return {"per_seed": ", ".join(f"{x:+.1f}" for x in test.diffs), "t": t, "p": one_sided(test.t_p_greater),
            "exact": one_sided(test.flip_p_greater), "verdict": verdict,
            "examples": f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"}


def decided(test: SeedTest) -> bool:
    """The pre-registered decision rule: mean paired difference > 0 and one-sided paired t p < α."""
    return test.mean > 0 and test.t_p_greater < CONFIRMATION["alpha"]


DIFF_HEAD = ("per-seed Δ (pts) | mean Δ, 95 % paired t-interval over seeds | p (t, two-sided) | p (exact sign-flip) "
             "| verdict | Δ, 95 % bootstrap over examples, seeds fixed (secondary)")


def diff_cells(cells: dict[str, str]) -> str:
    return " | ".join(cells[k] for k in ("per_seed", "t", "p", "exact", "verdict", "examples"))


def other_pairs(track_rows: list[dict], track: str, device: str, gains: list, deciding: bool = False) -> list[str]:
    """The OTHER_PAIRS both of whose arms this track ran, as a small table of its own. On the confirmation's
    track the primary pair reads by the one-sided rule (`deciding`: this is the block that decides)."""
    lines = []
    for arm, baseline, question in OTHER_PAIRS:
        pairs = seed_pairs(track_rows, track, arm, baseline)
        primary = None
        if track == CONFIRMATION["track"] and (arm, baseline) == CONFIRMATION["primary"]:
            primary = "deciding" if deciding else "apart"
            question += " (PRIMARY, pre-registered: one-sided)"
        if pairs:
            cells = difference(pairs, track, f"{arm} vs {baseline}", device, gains, primary)
            lines.append(f"| {arm} − {baseline} | {question} | {len(pairs)} | {diff_cells(cells)} |")
    if not lines:
        return []
    return ["", f"| pair | question | seeds | {DIFF_HEAD} |", "|---|---|---|---|---|---|---|---|---|", *lines]


def deciding_block(rows: list[dict]) -> list[dict]:
    """The one block whose rows decide the confirmation (Amendment 1): its track, the planned arms and seeds,
    on a CPU, in fp32. Everything else on that track is reported apart."""
    plan = CONFIRMATION
    return [r for r in rows if r["track"] == plan["track"] and r["arm"] in plan["arms"] and r["seed"] in plan["seeds"]
            and row_device(r) == plan["device"] and row_precision(r) == plan["precision"]]


def confirmation_verdict(rows: list[dict]) -> str:
    """The pre-registered primary test over exactly the deciding block, worded by the rule committed before
    the runs (TRAINING.md): one verdict, whatever other rows of the track exist."""
    arm, baseline = CONFIRMATION["primary"]
    planned = set(CONFIRMATION["seeds"])
    pairs = seed_pairs(deciding_block(rows), CONFIRMATION["track"], arm, baseline)
    done = sorted(r["seed"] for _, r in pairs)
    if done != sorted(planned):
        return (f"Primary comparison ({arm} − {baseline}): {len(done)} of {len(planned)} planned seed pairs done; "
                "no verdict until all have run.")
    test = seed_test([100 * (r["metrics"]["accuracy"] - b["metrics"]["accuracy"]) for b, r in pairs])
    confirmed = decided(test)
    return (f"Primary comparison ({arm} − {baseline}, pre-registered): mean {test.mean:+.2f} points over "
            f"{test.n} seeds, one-sided paired t p = {fmt_p(test.t_p_greater)} (exact one-sided sign-flip p = "
            f"{fmt_p(test.flip_p_greater)}): **{'CONFIRMED' if confirmed else 'NOT CONFIRMED'}** at "
            f"α = {CONFIRMATION['alpha']}.")


def report(rows: list[dict], gains: list | None = None) -> str:
    gains = [] if gains is None else gains
    lines = []
    # a block: one track on one kind of device in one precision; blocks are never paired or averaged together
    for name, device, precision in dict.fromkeys((r["track"], row_device(r), row_precision(r)) for r in rows):
        track_rows = [r for r in rows if r["track"] == name and row_device(r) == device
                      and row_precision(r) == precision]
        by_seed = sorted(track_rows, key=lambda r: r["seed"])  # per-seed differences read in seed order
        on = "" if device == "cpu" else f", on {track_rows[0]['machine']['device']}"
        on += "" if precision == "bf16" else f", {precision}"  # bf16: every row before precision was recorded
        deciding = name == CONFIRMATION["track"] and bool(deciding_block(track_rows))
        t = TRACKS.get(name, {})
        trained = track_rows[0].get("train_examples", f"the first {t.get('train_limit')} rows'")
        scored = len(correct(predictions_of(track_rows[0])))
        split = f"; {SPLIT_NOTES[name]}" if name in SPLIT_NOTES else ""
        lines += [f"### {name}{on} (train {trained} examples with rationales, {t.get('epochs')} epoch(s); "
                  f"evaluated on {scored} held-out examples{split})", "",
                  f"| arm | seeds | accuracy mean ± std | one-class runs | {DIFF_HEAD} | steps | train tokens "
                  "| train wall s (median) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        order = list(ARMS)  # the table reads baseline, α=0.3, α=1, then the equal-time and ablation arms
        for arm in sorted(dict.fromkeys(r["arm"] for r in track_rows),
                          key=lambda a: order.index(a) if a in order else len(order)):
            arm_rows = sorted((r for r in track_rows if r["arm"] == arm), key=lambda r: r["seed"])
            accs = [r["metrics"]["accuracy"] for r in arm_rows]
            spread = f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" if len(accs) > 1 else f"{accs[0]:.4f}"
            flagged = sum(one_class(r) for r in arm_rows)
            cells = (dict.fromkeys(("per_seed", "t", "p", "exact", "verdict", "examples"), "—") if arm == "a0"
                     else difference(seed_pairs(by_seed, name, arm), name, arm, device, gains))
            mean = lambda k: statistics.mean(r[k] for r in arm_rows)  # noqa: E731
            lines.append(f"| {arm} | {len(arm_rows)} | {spread} | {flagged or '—'} | {diff_cells(cells)} "
                         f"| {mean('steps'):.0f} | {mean('train_tokens'):,.0f} "
                         f"| {statistics.median(r['train_wall_s'] for r in arm_rows):.0f} |")
        lines += other_pairs(by_seed, name, device, gains, deciding)
        if deciding:
            lines += ["", confirmation_verdict(by_seed)]
        elif name == CONFIRMATION["track"]:
            lines += ["", "These rows are reported apart and decide nothing: only the CPU fp32 block decides "
                          "(TRAINING.md, Amendment 1)."]
        m = track_rows[0]["machine"]
        native = {r["machine"].get("bf16_native") for r in track_rows} - {None}
        torch_versions = sorted({r["machine"]["torch"] for r in track_rows if "torch" in r["machine"]})
        recorded = (f"; torch {', '.join(torch_versions)}" if torch_versions else "") + (
            f"; bf16 native: {', '.join('yes' if n else 'no' for n in sorted(native))}" if native else "")
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}{recorded}; commits "
                      f"{sorted({r['commit'] for r in track_rows})}; dates {track_rows[0]['date']} … {track_rows[-1]['date']}.",
                  ""]
    if lines:
        lines += [f"Seeds are the unit: a difference is called significant only with {MIN_SEEDS_FOR_SIGNIFICANCE} or more "
                  "seeds and a two-sided paired t-test p < 0.05. The bootstrap over examples holds the seeds fixed "
                  f"and is narrower than the truth. One-class runs: runs that gave one answer to ≥ {ONE_CLASS_SHARE:.0%} "
                  "of the examples.", ""]
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
    from contract.metrics import compute_metrics

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


def superglue_average_ci(rows: list[dict], arm: str = "a1", resamples: int = 2000, seed: int = 0,
                         names: list[str] | None = None) -> tuple[float, float, float, float, float, float]:
    """The paper's macro-average difference (`arm` − α=0, in points) over `names` (default: all seven
    tasks) and its relative change, each with a 95 % interval from a bootstrap that resamples, within
    every task, the seed pairs and the scored examples (MultiRC: whole questions, since its EM is per
    question). Secondary: with 1-3 seeds per task a percentile bootstrap over seeds is too narrow."""
    from contract.tasks import Example, get_task
    from contract.metrics import compute_metrics

    tasks = []
    for name in names or list(SUPERGLUE):
        task = get_task(SUPERGLUE[name]["task"])
        pairs = seed_pairs(rows, name, arm)
        runs = [[{p["key"]: p for p in read_predictions(predictions_of(r))} for r in pair] for pair in pairs]
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
    # A task where any run answered one class measures nothing about the heads: left out of the average.
    informative = [t for t in tasks if not any(one_class(r) for r in runs(t, "a0") + runs(t, arm))]
    averages = {}
    for name, label in (("a0", "pooled baseline (α=0)"), (arm, f"DHRD ({' '.join(ARMS[arm])})")):
        cells, scores = [], []
        for t in tasks:
            rs = runs(t, name)
            mark = "" if t in informative else " †"
            cells.append(f"{cell(t, [r['metrics'] for r in rs])} ({len(rs)}){mark}" if rs else "—")
            if rs and t in informative:
                scores.append(100 * statistics.mean(r["metrics"]["score"] for r in rs))
        complete = complete and len(scores) >= MIN_INFORMATIVE_TASKS
        averages[name] = statistics.mean(scores) if complete else None
        avg = f"{averages[name]:.2f}" if complete else "—"
        rel = f"{100 * (averages[name] / averages['a0'] - 1):+.2f} %" if complete and name != "a0" else "—"
        lines.append(f"| SmolLM2-135M (ours{f', {device}' * bool(device)}) | {label} | " + " | ".join(cells) + f" | {avg} | {rel} |")
    majority, scores = [], []
    for t in tasks:
        m = majority_metrics(t, predictions_of(runs(t, "a0")[0])) if runs(t, "a0") else None
        majority.append(cell(t, [m]) if m else "—")
        if t in informative:
            scores.append(100 * m["score"] if m else 0.0)
    avg = f"{statistics.mean(scores):.2f}" if complete else "—"
    lines.append("| — | majority class of the scored examples | " + " | ".join(majority) + f" | {avg} | — |")
    for model, setting, cells_by_task, avg, rel in PAPER_TABLE1:
        lines.append(f"| {model} (paper) | {setting} | " + " | ".join(cells_by_task[t] for t in tasks)
                     + f" | {avg} | {rel} |")
    left_out = [t for t in tasks if t not in informative]
    lines += ["", "Ours: mean over the seeds in brackets, official SuperGLUE val split (capped where SUPERGLUE "
              "says); the paper's: its Table 1 (3-8B backbones, Gemini 2.5 Flash rationales, full train sets). "
              + (f"Our Avg is over {', '.join(informative)} only" if complete else
                 f"No average of ours: only {len(informative)} task(s) ({', '.join(informative) or 'none'}) had no "
                 f"one-class run, fewer than {MIN_INFORMATIVE_TASKS}")
              + (f": † marks tasks where at least one run answered one class for ≥ {ONE_CLASS_SHARE:.0%} of the "
                 f"examples ({', '.join(left_out)}), left out of the averages since they measure nothing about "
                 "the heads; the paper's Avg is over all seven." if left_out else "."), ""]
    lines += ["| task | one-class runs (α=0, arm) | per-seed Δ score (pts) | mean Δ, 95 % paired t-interval over seeds "
              "| p (t, two-sided) |", "|---|---|---|---|---|"]
    for t in tasks:
        pairs = seed_pairs(rows, t, arm)
        if pairs:
            test = seed_test([100 * (r["metrics"]["score"] - b["metrics"]["score"]) for b, r in pairs])
            flags = f"{sum(one_class(b) for b, _ in pairs)}/{len(pairs)}, {sum(one_class(r) for _, r in pairs)}/{len(pairs)}"
            t_cell = f"{test.mean:+.2f} [{test.lo:+.2f}, {test.hi:+.2f}]" if test.n > 1 else f"{test.mean:+.2f} (one seed)"
            lines.append(f"| {t} | {flags} | {', '.join(f'{x:+.1f}' for x in test.diffs)} | {t_cell} | {fmt_p(test.t_p)} |")
    lines.append("")
    if complete:
        d, lo, hi, rel, rlo, rhi = superglue_average_ci(rows, arm, names=informative)
        lines += [f"Average difference over {', '.join(informative)}, {arm} − α=0: {d:+.2f} points, relative {rel:+.2f} %; "
                  f"secondary bootstrap over each task's seed pairs and scored examples (MultiRC by question), "
                  f"too narrow with 1-3 seeds: [{lo:+.2f}, {hi:+.2f}] points, [{rlo:+.2f}, {rhi:+.2f}] %.", ""]
    return "\n".join(lines)


