"""The accuracy study's runs and report, on synthetic predictions (the runs themselves are hours)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))  # as `python scripts/accuracy_study.py` has it
from study import report, runs, statistics, tracks  # noqa: E402

# one name space over the package's modules, as the tests read best
study = SimpleNamespace(**{k: getattr(m, k) for m in (tracks, runs, statistics, report) for k in dir(m)
                           if not k.startswith("_")})


def predictions(path: Path, right: list[bool]) -> Path:
    path.write_text("".join(json.dumps({"key": f"k{i}", "pred": 1 if ok else 0, "gold": 1, "probs": []}) + "\n"
                            for i, ok in enumerate(right)))
    return path


def test_report_gives_mean_std_and_the_paired_difference_per_arm(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    rows = []
    for seed in (0, 1):
        for arm, acc in (("a0", 0.5), ("a1", 0.75)):
            right = [i < acc * 100 for i in range(100)]
            pred = predictions(tmp_path / f"{arm}-{seed}.jsonl", right)
            rows.append({"track": "esnli", "arm": arm, "seed": seed, "metrics": {"accuracy": acc},
                         "steps": 10, "train_tokens": 1000, "train_wall_s": 5.0, "predictions": pred.name,
                         "machine": {"cpu": "X", "cores": 2, "device": "cpu"}, "commit": "abc", "date": "d"})
    gains: list = []
    text = study.report(rows, gains)
    assert "| a0 | 2 | 0.5000 ± 0.0000 | — | — | — |" in text
    (label, d, lo, hi, t_lo, t_hi), = gains  # two seeds: the plot gets the t-interval over seeds too
    assert label == "esnli a1 (2 seeds)" and t_lo == d == t_hi and lo < d < hi  # same +25 on both seeds
    line = next(l for l in text.splitlines() if l.startswith("| a1 |"))
    assert line.startswith("| a1 | 2 | 0.7500 ± 0.0000 | — | +25.0, +25.0 | +25.00 [+25.00, +25.00] |")
    assert "2 seeds: too few to call" in line
    low = float(line.split("| +25.00 [")[-1].split(",")[0])
    assert 10 < low < 25  # the bootstrap over the 100 examples: an interval around +25 that excludes 0
    assert "evaluated on 100 held-out examples" in text


def test_equal_time_and_two_epoch_arms_are_also_compared_with_the_longer_trained_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    rows = []
    for arm, acc in (("a0", 0.5), ("a1", 0.5), ("a0-2x", 0.7), ("a1-2x", 0.6)):
        pred = predictions(tmp_path / f"{arm}.jsonl", [i < acc * 100 for i in range(100)])
        rows.append({"track": "esnli", "arm": arm, "seed": 0, "metrics": {"accuracy": acc}, "steps": 10,
                     "train_tokens": 1000, "train_wall_s": 5.0, "predictions": pred.name,
                     "machine": {"cpu": "X", "cores": 2, "device": "cpu"}, "commit": "abc", "date": "d"})
    gains: list = []
    text = study.report(rows, gains)
    assert "| a1 − a0-2x | equal wall time" in text and "| a1-2x − a0-2x | equal steps at twice the epochs" in text
    pairs = {g[0]: round(100 * g[1]) for g in gains}
    assert pairs["esnli a1 vs a0-2x (1 seed)"] == -20 and pairs["esnli a1-2x vs a0-2x (1 seed)"] == -10
    assert pairs["esnli a1-2x (1 seed)"] == 10  # the main table still reads every arm against α=0
    two = study.train_args("esnli", "a1-2x", 0, tmp_path / "a1-2x-s0")
    assert two[two.index("--epochs") + 1] == "2" and two[two.index("--alpha") + 1] == "1"


def test_the_shuffled_ablation_keeps_every_example_and_label_but_moves_the_reasons(tmp_path):
    from contract.tasks import get_task
    from training.rationales.rows import default_rationale_file, read_rows

    original = [row for _, row in read_rows(default_rationale_file(get_task("esnli")))]
    path = study.shuffled_rationales(study.TRACKS["esnli"], tmp_path / "s0.jsonl", 0)
    shuffled = [json.loads(line) for line in path.read_text().splitlines()]
    without = lambda rows: [{k: v for k, v in r.items() if k != "rationale"} for r in rows]  # noqa: E731
    assert without(shuffled) == without(original)
    assert sorted(r["rationale"] for r in shuffled) == sorted(r["rationale"] for r in original)
    assert sum(a["rationale"] != b["rationale"] for a, b in zip(shuffled, original)) > 0.9 * len(original)
    assert study.shuffled_rationales(study.TRACKS["esnli"], tmp_path / "again.jsonl", 0).read_text() == path.read_text()
    args = study.train_args("esnli", "a1-2x-shuffled", 1, tmp_path / "esnli" / "a1-2x-shuffled-s1")
    assert args[args.index("--epochs") + 1] == "2" and args[-1] == str(tmp_path / "esnli" / "shuffled-s1.jsonl")


def test_rows_from_a_gpu_are_reported_apart_and_never_paired_with_cpu_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    rows = []
    for device, a1_acc in (("cpu", 0.75), ("NVIDIA H200", 0.25)):
        for arm, acc in (("a0", 0.5), ("a1", a1_acc)):
            pred = predictions(tmp_path / f"{arm}-{device}.jsonl", [i < acc * 100 for i in range(100)])
            rows.append({"track": "esnli", "arm": arm, "seed": 0, "metrics": {"accuracy": acc}, "steps": 10,
                         "train_tokens": 1000, "train_wall_s": 5.0, "predictions": pred.name,
                         "machine": {"cpu": "X", "cores": 2, "device": device}, "commit": "abc", "date": "d"})
    gains: list = []
    text = study.report(rows, gains)
    assert "### esnli (" in text and "### esnli, on NVIDIA H200 (" in text
    assert [(g[0], round(g[1], 2)) for g in gains] == [("esnli a1 (1 seed)", 0.25), ("esnli a1 GPU (1 seed)", -0.25)]


def test_kept_predictions_are_compressed_reproducible_and_read_back(tmp_path):
    source = predictions(tmp_path / "val.predictions.jsonl", [True, False, True])
    first = study.keep_predictions(source, tmp_path / "kept" / "a0-s0.cpu.jsonl.gz").read_bytes()
    again = study.keep_predictions(source, tmp_path / "again.jsonl.gz").read_bytes()
    assert first == again  # no timestamp in the gzip header: rerunning the report changes no committed bytes
    assert study.correct(tmp_path / "kept" / "a0-s0.cpu.jsonl.gz") == study.correct(source) \
        == {"k0": True, "k1": False, "k2": True}


def test_merging_a_gpu_machines_rows_adds_only_its_new_runs_with_their_predictions(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path / "here")
    ours, theirs = tmp_path / "here", tmp_path / "gpu-out"
    row = lambda arm, device: {"track": "esnli", "arm": arm, "seed": 0,  # noqa: E731
                               "predictions": f"reports/accuracy/predictions/esnli/{arm}-s0.{device}.jsonl.gz",
                               "machine": {"device": "cpu" if device == "cpu" else "NVIDIA H200"}}
    (ours / "reports/accuracy").mkdir(parents=True)
    (ours / "reports/accuracy/rows.jsonl").write_text(json.dumps(row("a0", "cpu")) + "\n")
    (theirs / "reports/accuracy/predictions/esnli").mkdir(parents=True)
    # the GPU machine's rows file is our file as sent, plus what it ran
    (theirs / "reports/accuracy/rows.jsonl").write_text(
        "".join(json.dumps(row(arm, device)) + "\n" for arm, device in (("a0", "cpu"), ("a0", "cuda"), ("a1", "cuda"))))
    for arm in ("a0", "a1"):
        (theirs / f"reports/accuracy/predictions/esnli/{arm}-s0.cuda.jsonl.gz").write_bytes(arm.encode())
    added = study.merge_rows(theirs, ours / "reports/accuracy/rows.jsonl")
    assert [(r["arm"], r["machine"]["device"]) for r in added] == [("a0", "NVIDIA H200"), ("a1", "NVIDIA H200")]
    assert (ours / "reports/accuracy/predictions/esnli/a1-s0.cuda.jsonl.gz").read_bytes() == b"a1"
    assert len(study.read_rows(ours / "reports/accuracy/rows.jsonl")) == 3
    assert study.merge_rows(theirs, ours / "reports/accuracy/rows.jsonl") == []  # merging twice adds nothing


def test_every_arm_of_a_track_trains_the_same_data_order_and_budget(tmp_path):
    a0 = study.train_args("esnli", "a0", 1, tmp_path / "a0-s1")
    a1 = study.train_args("esnli", "a1", 1, tmp_path / "a1-s1")
    twice = study.train_args("esnli", "a0-2x", 1, tmp_path / "a0-2x-s1")
    def data_and_budget(args: list[str]) -> list[str]:
        """The arguments left once the run directory and the loss flags (each with its value) are dropped."""
        kept, skip = [], False
        for a in args:
            if not skip and not a.startswith(str(tmp_path)) and a not in ("--alpha", "--beta", "--lm-span"):
                kept.append(a)
            skip = a in ("--alpha", "--beta", "--lm-span")
        return kept

    assert data_and_budget(a0) == data_and_budget(a1)
    assert a1[a1.index("--lm-span") + 1] == "all"  # the Eq.-3 arm names its span: the default moved to 'suffix'
    assert twice[twice.index("--epochs") + 1] == "2" and a0[a0.index("--epochs") + 1] == "1"
    assert "--resume" in a0 and a0[a0.index("--seed") + 1] == "1"


def test_the_gain_plot_is_written(tmp_path):
    study.plot([("esnli a1 (3 seeds)", 0.02, -0.01, 0.05, -0.08, 0.10),
                ("esnli a0-2x (1 seed)", -0.01, -0.03, 0.01, None, None), ("old", 0.0, -0.01, 0.01)],
               tmp_path / "gains.png")
    assert (tmp_path / "gains.png").stat().st_size > 1000


def test_training_time_ignores_a_pause_between_kill_and_resume(tmp_path):
    times = [0, 2, 4, 6, 1006, 1008]  # a 1,000 s pause after step 4
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"time": t}) + "\n" for t in times))
    assert study.training_seconds(tmp_path, 9999.0) == 12.0


def test_seeds_that_disagree_give_a_wide_t_interval_and_no_verdict(tmp_path, monkeypatch):
    """Three seeds: +25, −25 and +10 points. The bootstrap over examples, seeds fixed, is narrow; the
    report's primary interval is over seeds, wide, and three seeds are never called significant."""
    monkeypatch.setattr(runs, "REPO", tmp_path)
    rows = []
    for seed, arm_acc in ((0, 0.75), (1, 0.25), (2, 0.6)):
        for arm, acc in (("a0", 0.5), ("a1", arm_acc)):
            pred = predictions(tmp_path / f"{arm}-{seed}.jsonl", [i < acc * 100 for i in range(100)])
            rows.append({"track": "esnli", "arm": arm, "seed": seed, "metrics": {"accuracy": acc}, "steps": 10,
                         "train_tokens": 1000, "train_wall_s": 5.0, "predictions": pred.name,
                         "machine": {"cpu": "X", "cores": 2, "device": "cpu"}, "commit": "abc", "date": "d"})
    gains: list = []
    line = next(l for l in study.report(rows, gains).splitlines() if l.startswith("| a1 |"))
    assert "+25.0, -25.0, +10.0" in line and "3 seeds: too few to call" in line
    (_, d, lo, hi, t_lo, t_hi), = gains
    assert (t_hi - t_lo) > 5 * (hi - lo) and t_lo < 0 < t_hi
    assert round(100 * t_lo, 1) == round(study.seed_test([25.0, -25.0, 10.0]).lo, 1)


def test_a_run_that_answers_one_class_is_counted_in_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    rows = []
    for arm, right in (("a0", [i % 2 == 0 for i in range(100)]), ("a1", [True] * 100)):
        pred = predictions(tmp_path / f"{arm}.jsonl", right)  # a1 predicts 1 everywhere (gold is 1)
        rows.append({"track": "esnli", "arm": arm, "seed": 0, "metrics": {"accuracy": sum(right) / 100}, "steps": 1,
                     "train_tokens": 1, "train_wall_s": 1.0, "predictions": pred.name,
                     "machine": {"cpu": "X", "cores": 2, "device": "cpu"}, "commit": "abc", "date": "d"})
    text = study.report(rows)
    assert next(l for l in text.splitlines() if l.startswith("| a1 |")).startswith("| a1 | 1 | 1.0000 | 1 |")
    assert next(l for l in text.splitlines() if l.startswith("| a0 |")).startswith("| a0 | 1 | 0.5000 | — |")
    assert "the SELECTION split: e-SNLI test rows 0-1999" in text


def test_the_superglue_table_averages_like_the_paper_and_shows_the_majority_class(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    golds = {"cb": ["entailment"] * 3 + ["contradiction"], "multirc": ["True", "False", "False", "False"],
             "copa": ["choice1"] * 3 + ["choice2"], "rte": ["entailment"] * 3 + ["not_entailment"]}
    rows = []
    for task in study.SUPERGLUE:
        gold = golds.get(task, ["True", "True", "True", "False"])
        pred = tmp_path / f"{task}.jsonl"
        pred.write_text("".join(json.dumps({"key": f"{task}/0/{i // 2}/{i}", "pred": g, "gold": g}) + "\n"
                                for i, g in enumerate(gold)))
        for arm, score in (("a0", 0.6), ("a1", 0.66)):
            metrics = {"accuracy": score, "score": score, "f1_macro": score, "f1a": score, "em": score}
            rows.append({"track": task, "arm": arm, "seed": 0, "metrics": metrics, "predictions": pred.name})
    lone = {**rows[0], "seed": 7, "metrics": {k: 0.0 for k in rows[0]["metrics"]}}  # a seed only α=0 ran
    table = study.superglue_table(rows + [lone])
    ours = [line for line in table.splitlines() if line.startswith("| SmolLM2-135M (ours)")]
    assert ours[0].endswith("| 60.00 | — |") and ours[1].endswith("| 66.00 | +10.00 % |")  # the lone seed is left out
    assert "| 60.0/60.0 (1) |" in ours[0]  # CB as F1/Acc
    majority = next(line for line in table.splitlines() if "majority class" in line)
    # CB: always "entailment" → acc 0.75, macro-F1 over 3 classes (0.857 + 0 + 0) / 3; MultiRC: always
    # "False" → F1a 0, EM: questions {0/0: [T, F] wrong, 0/1: [F, F] right} = 0.5
    assert "| 28.6/75.0 |" in majority and "| 0.0/50.0 |" in majority
    assert "| Llama-3.2-3B (paper) | DHRD α=β=1 |" in table and "| 81.57 | +5.47 % |" in table


def test_the_superglue_average_difference_has_an_interval_over_seeds_and_examples(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    labels = {"cb": ["entailment", "contradiction"], "copa": ["choice1", "choice2"],
              "rte": ["entailment", "not_entailment"]}
    rows = []
    for task in study.SUPERGLUE:
        yes, no = labels.get(task, ["True", "False"])
        gold = [yes if i % 2 else no for i in range(60)]
        for arm, right in (("a0", lambda i: i % 3 != 0), ("a1", lambda i: True), ("same", lambda i: i % 3 != 0)):
            for seed in (0, 1):
                pred = tmp_path / f"{task}-{arm}-{seed}.jsonl"
                pred.write_text("".join(json.dumps({"key": f"{task}/0/{i // 3}/{i}", "gold": g,
                                                    "pred": g if right(i) else (no if g == yes else yes)}) + "\n"
                                        for i, g in enumerate(gold)))
                rows.append({"track": task, "arm": arm, "seed": seed, "predictions": pred.name})
    d, lo, hi, rel, rlo, rhi = study.superglue_average_ci(rows, "a1", resamples=200)
    assert 0 < lo < d < hi and 0 < rlo < rel < rhi  # right everywhere against wrong on a third: clearly ahead
    assert study.superglue_average_ci(rows, "same", resamples=200) == (0, 0, 0, 0, 0, 0)


def test_the_superglue_table_has_no_average_until_every_task_has_both_arms(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    pred = tmp_path / "rte.jsonl"
    pred.write_text(json.dumps({"key": "rte/0", "pred": "entailment", "gold": "entailment"}) + "\n")
    rows = [{"track": "rte", "arm": arm, "seed": 0, "metrics": {"accuracy": 0.5, "score": 0.5}, "predictions": pred.name}
            for arm in ("a0", "a1")]
    table = study.superglue_table(rows)
    assert all(line.endswith("| — | — |") for line in table.splitlines() if "(ours)" in line)


def test_a_teacher_comparison_trains_both_rationale_sets_on_the_same_examples(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    sets = tmp_path / "data" / "rationales"
    sets.mkdir(parents=True)
    row = lambda k, teacher: json.dumps({"key": f"wsc/{k}", "label": "True",  # noqa: E731
                                         "rationale": f"{teacher[0]}{k}", "teacher": teacher}) + "\n"
    (sets / "wsc.train.jsonl").write_text(row(0, "human") + row(1, "teacher") + row(2, "human"))
    (sets / "wsc.smollm2.train.jsonl").write_text("".join(row(k, "teacher") for k in range(4)))
    monkeypatch.setitem(study.TRACKS, "pair", {"task": "wsc", "train_limit": 9, "epochs": 1, "eval_limit": None,
                                               "rationales": {"file": "wsc.train.jsonl", "teacher": "human"},
                                               "alt_rationales": {"file": "wsc.smollm2.train.jsonl"}})
    keys = {}
    for arm in ("a0", "a1", "a1-alt"):
        args = study.train_args("pair", arm, 0, tmp_path / "runs" / "pair" / f"{arm}-s0")
        path = Path(args[args.index("--rationales") + 1])
        keys[arm] = [(json.loads(line)["key"], json.loads(line)["rationale"]) for line in path.read_text().splitlines()]
        assert "--only-with-rationales" in args
    assert keys["a0"] == keys["a1"] == [("wsc/0", "h0"), ("wsc/2", "h2")]  # the human rows only
    assert keys["a1-alt"] == [("wsc/0", "t0"), ("wsc/2", "t2")] and "--alt-rationales" not in args


def test_padding_waste_counts_the_pad_tokens_of_the_arms_own_batches(tmp_path, monkeypatch, tiny_backbone, data_dir):
    plain = study.train_args
    monkeypatch.setattr(runs, "train_args", lambda *a: plain(*a) + ["--backbone", str(tiny_backbone),
                                                                     "--data-dir", str(data_dir)])
    a0, a1 = study.padding_waste("cb", "a0"), study.padding_waste("cb", "a1")
    assert a0["examples"] == a1["examples"] == 250
    assert a1["real_tokens"] > a0["real_tokens"]  # the rationale and answer
    for r in (a0, a1):
        assert r["real_tokens"] < r["padded_tokens"] and r["waste"] == round(1 - r["real_tokens"] / r["padded_tokens"], 4)


def confirmation_rows(tmp_path: Path, gains: tuple[float, ...], device: str = "cpu", precision: str = "fp32",
                      n: int = 1000) -> list[dict]:
    """The primary pair's rows for the planned seeds: the baseline at 0.7, the arm at 0.7 + gain (in points)."""
    plan = study.CONFIRMATION
    arm, baseline = plan["primary"]
    rows = []
    for seed, gain in zip(plan["seeds"], gains):
        for name, acc in ((baseline, 0.7), (arm, round(0.7 + gain / 100, 4))):
            pred = predictions(tmp_path / f"{name}-{seed}-{device}-{precision}.jsonl", [i < acc * n for i in range(n)])
            rows.append({"track": plan["track"], "arm": name, "seed": seed, "split": "confirm",
                         "precision": precision, "metrics": {"accuracy": acc},
                         "steps": 1, "train_tokens": 1, "train_wall_s": 1.0, "predictions": pred.name,
                         "machine": {"cpu": "X", "cores": 2, "device": device, "torch": "2.13.0",
                                     "bf16_native": False}, "commit": "abc", "date": "d"})
    return rows


def test_the_confirmation_gives_its_verdict_only_when_every_planned_seed_has_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "REPO", tmp_path)
    plan = study.CONFIRMATION
    rows = confirmation_rows(tmp_path, (3.0, 2.0, 4.0, 1.0, 3.0))
    assert "4 of 5 planned seed pairs done; no verdict" in study.confirmation_verdict(rows[:-2])
    verdict = study.confirmation_verdict(rows)
    assert "mean +2.60 points over 5 seeds" in verdict and "**CONFIRMED**" in verdict
    flat = [dict(r, metrics={"accuracy": 0.7}) for r in rows]
    assert "**NOT CONFIRMED**" in study.confirmation_verdict(flat)
    assert "the CONFIRMATION split: e-SNLI test rows 2000-5999" in study.report(rows)
    args = study.train_args(plan["track"], "a1-2x-suffix-shuffled", 10, tmp_path / "esnli-confirm" / "x-s10")
    assert args[args.index("--lm-span") + 1] == "suffix" and "shuffled-s10.jsonl" in args[args.index("--rationales") + 1]
    assert args[-2:] == ["--precision", "fp32"]  # passed explicitly, never left to `auto` (Amendment 1)
    # the precision study's --precision cannot move the confirmation off fp32
    again = study.train_args(plan["track"], "a0-2x", 10, tmp_path / "esnli-confirm" / "a0-2x-s10", "bf16")
    assert again[-2:] == ["--precision", "fp32"] and again.count("--precision") == 1


def test_the_precision_study_passes_its_precision_only_where_a_track_names_none(tmp_path):
    """`accuracy_study.py --precision bf16` trains the selection track's runs in bf16 whatever `auto` would pick."""
    plain = study.train_args("esnli", "a0-2x", 0, tmp_path / "a0-2x-s0")
    bf16 = study.train_args("esnli", "a0-2x", 0, tmp_path / "a0-2x-s0-bf16", "bf16")
    assert "--precision" not in plain and bf16[-2:] == ["--precision", "bf16"]
    assert [a.replace("a0-2x-s0-bf16", "a0-2x-s0") for a in bf16[:-2]] == plain  # nothing else changes


def test_the_primary_pairs_table_row_and_the_verdict_line_apply_one_rule(tmp_path, monkeypatch):
    """Per seed +3.0, -0.5, +2.5, +1.5, +0.5: one-sided p 0.047 (confirmed by the pre-registered rule),
    two-sided 0.094. The table's primary row must say what the verdict line says, with one-sided p values."""
    monkeypatch.setattr(runs, "REPO", tmp_path)
    text = study.report(confirmation_rows(tmp_path, (3.0, -0.5, 2.5, 1.5, 0.5)))
    row = next(l for l in text.splitlines() if l.startswith("| a1-2x-suffix − a0-2x |"))
    assert "PRIMARY" in row and "| 0.047 one-sided |" in row and "| CONFIRMED (one-sided rule) |" in row
    assert "not significant" not in row
    assert "**CONFIRMED**" in text and "one-sided paired t p = 0.047" in text
    worse = study.report(confirmation_rows(tmp_path, (3.0, -2.5, 2.5, 1.5, -0.5)))
    row = next(l for l in worse.splitlines() if l.startswith("| a1-2x-suffix − a0-2x |"))
    assert "| NOT CONFIRMED (one-sided rule) |" in row and "**NOT CONFIRMED**" in worse


def test_only_the_cpu_fp32_block_decides_and_it_gives_one_verdict(tmp_path, monkeypatch):
    """Amendment 1: a GPU block or a block in another precision on the same track is reported apart; the
    verdict is computed once, over the planned CPU fp32 runs, however the other blocks came out."""
    monkeypatch.setattr(runs, "REPO", tmp_path)
    deciding = confirmation_rows(tmp_path, (-1.0, 0.5, -0.5, 0.0, 1.0))  # not confirmed
    gpu = confirmation_rows(tmp_path, (5.0, 6.0, 5.5, 6.5, 5.0), device="NVIDIA H200")  # would confirm
    bf16 = confirmation_rows(tmp_path, (5.0, 6.0, 5.5, 6.5, 5.0), precision="bf16")  # would confirm
    text = study.report(gpu + bf16 + deciding)
    assert text.count("Primary comparison (") == 1 and "**NOT CONFIRMED**" in text and "**CONFIRMED**" not in text
    assert text.count("These rows are reported apart and decide nothing") == 2
    assert "### esnli-confirm, fp32 (" in text and "### esnli-confirm, on NVIDIA H200, fp32 (" in text
    assert "### esnli-confirm (" in text  # the bf16 block: rows before precision was recorded read as bf16
    assert text.count("decides nothing (Amendment 1) |") == 2
    assert "no verdict" in study.confirmation_verdict(gpu + bf16)
    assert "torch 2.13.0; bf16 native: no" in text


def test_the_study_refuses_a_confirmation_run_or_row_that_is_not_fp32(tmp_path, monkeypatch):
    plan = study.CONFIRMATION
    args = study.train_args(plan["track"], "a0-2x", 10, tmp_path / "esnli-confirm" / "a0-2x-s10")
    study.check_planned(plan["track"], args, "abc1234")  # as planned: no error
    with pytest.raises(study.StudyError, match="--precision fp32"):
        study.check_planned(plan["track"], args[:-2], "abc1234")
    with pytest.raises(study.StudyError, match="--precision fp32"):
        study.check_planned(plan["track"], args + ["--precision", "bf16"], "abc1234")  # the last flag wins
    with pytest.raises(study.StudyError, match="clean commit"):
        study.check_planned(plan["track"], args, "abc1234-dirty")
    study.check_planned("esnli", study.train_args("esnli", "a0-2x", 0, tmp_path / "a"), "abc-dirty")  # not confirm
    rows = tmp_path / "rows.jsonl"
    row = {"track": plan["track"], "arm": "a0-2x", "seed": 10, "split": "confirm", "precision": "bf16"}
    for bad in (row, {k: v for k, v in row.items() if k != "precision"}):
        with pytest.raises(study.StudyError, match="fp32 only"):
            study.append_row(rows, bad)
    assert not rows.exists()
    study.append_row(rows, {**row, "precision": "fp32"})
    study.append_row(rows, {**row, "split": "val", "precision": "bf16"})  # the selection split: any precision
    assert len(study.read_rows(rows)) == 2


def test_a_refused_confirmation_run_spends_no_training_time(tmp_path, monkeypatch):
    monkeypatch.setitem(study.TRACKS, "esnli-confirm", {k: v for k, v in study.TRACKS["esnli-confirm"].items()
                                                         if k != "precision"})
    monkeypatch.setattr(runs, "commit", lambda: "abc1234")
    monkeypatch.setattr(runs.subprocess, "run", lambda *a, **k: pytest.fail("trained a refused run"))
    with pytest.raises(study.StudyError):
        study.run_one("esnli-confirm", "a0-2x", 10, tmp_path / "runs", tmp_path / "rows.jsonl")


def test_a_row_names_its_predictions_relative_to_the_repository_that_holds_the_rows(tmp_path):
    """A pinned worktree writes into main's reports/accuracy/: the row must name the file as main sees it."""
    main = tmp_path / "main"
    kept = main / "reports" / "accuracy" / "predictions" / "esnli-confirm" / "a0-2x-s10.cpu.jsonl.gz"
    assert study.recorded_path(kept, main / "reports" / "accuracy" / "rows.jsonl") == \
        "reports/accuracy/predictions/esnli-confirm/a0-2x-s10.cpu.jsonl.gz"
    inside = runs.REPO / "reports" / "accuracy" / "predictions" / "x.gz"
    assert study.recorded_path(inside, runs.REPO / "reports" / "accuracy" / "rows.jsonl") == \
        "reports/accuracy/predictions/x.gz"


def test_the_machine_record_says_whether_bf16_is_native():
    from contract.model import native_bf16

    where = study.row_machine()
    assert where["bf16_native"] is native_bf16("cpu") and where["torch"] and where["device"] == "cpu"
    # the rows' schema is fixed: the shared machine() less its CPU flags, plus what trained
    assert list(where) == ["cpu", "cores", "python", "node", "torch", "device", "bf16_native"]


def test_the_confirmation_runs_in_its_amended_order():
    """For each seed the primary pair, then the shuffled control for every seed, then the equal-time arm."""
    plan = study.confirmation_plan()
    assert len(plan) == 20 == len(set(plan)) and {t for t, _, _ in plan} == {"esnli-confirm"}
    assert plan[:4] == [("esnli-confirm", "a0-2x", 10), ("esnli-confirm", "a1-2x-suffix", 10),
                        ("esnli-confirm", "a0-2x", 11), ("esnli-confirm", "a1-2x-suffix", 11)]
    assert [a for _, a, _ in plan[10:]] == ["a1-2x-suffix-shuffled"] * 5 + ["a0-3x"] * 5
    assert [s for _, _, s in plan[10:15]] == [10, 11, 12, 13, 14]


def test_a_finished_run_is_committed_alone_in_the_repository_that_holds_the_rows(tmp_path):
    import subprocess

    main = tmp_path / "main"
    git = lambda *a: subprocess.run(["git", *a], cwd=main, check=True, capture_output=True, text=True).stdout  # noqa: E731
    (main / "reports" / "accuracy" / "predictions" / "esnli-confirm").mkdir(parents=True)
    git("init", "-q")
    git("config", "user.email", "t@example.com"), git("config", "user.name", "t")
    (main / "other.txt").write_text("work in progress\n")
    git("add", "other.txt"), git("commit", "-qm", "start")
    (main / "other.txt").write_text("staged, not part of the run\n")
    git("add", "other.txt")
    pred = main / "reports" / "accuracy" / "predictions" / "esnli-confirm" / "a0-2x-s10.cpu.jsonl.gz"
    pred.write_bytes(b"x")
    rows = main / "reports" / "accuracy" / "rows.jsonl"
    row = {"track": "esnli-confirm", "arm": "a0-2x", "seed": 10, "precision": "fp32", "commit": "abc1234",
           "metrics": {"accuracy": 0.75}, "train_wall_s": 1500.0, "predictions": study.recorded_path(pred, rows)}
    rows.write_text(json.dumps(row) + "\n")
    study.commit_row(row, rows, 1, 20)
    assert git("show", "--name-only", "--format=%s", "HEAD").split() == [
        "Study", "run", "1/20:", "esnli-confirm", "a0-2x", "seed", "10,", "accuracy", "0.7500", "(fp32,", "trained",
        "from", "abc1234,", "1500", "s", "training)", "reports/accuracy/predictions/esnli-confirm/a0-2x-s10.cpu.jsonl.gz",
        "reports/accuracy/rows.jsonl"]
    assert git("diff", "--cached", "--name-only").split() == ["other.txt"]  # still staged, not committed


def test_holdout_scores_are_kept_recorded_and_committed_with_the_run(tmp_path, monkeypatch):
    """--holdout-scores: after a run's own split, `dhrd evaluate --split holdout`; its predictions are kept
    beside the rows and committed with them, its metrics recorded under the row's "holdout"."""
    import subprocess

    run = tmp_path / "runs" / "esnli" / "a0-2x-s0-fp32"
    calls = []

    def fake_evaluate(cmd, **kwargs):
        calls.append(cmd)
        (run / "eval").mkdir(parents=True, exist_ok=True)
        (run / "eval" / "holdout.predictions.jsonl").write_text('{"key": "esnli/valid-2001"}\n')
        (run / "eval" / "holdout.metrics.json").write_text(json.dumps({"metrics": {"accuracy": 0.7}, "examples": 1}))

    main = tmp_path / "main"
    rows = main / "reports" / "precision" / "rows.jsonl"
    monkeypatch.setattr(runs.subprocess, "run", fake_evaluate)
    scored = runs.score_holdout(run, rows, "esnli", "a0-2x-s0-fp32", {"device": "cpu"})
    monkeypatch.undo()
    (cmd,) = calls
    assert cmd[cmd.index("evaluate"):cmd.index("evaluate") + 6] == ["evaluate", str(run), "--split", "holdout",
                                                                      "--checkpoint", "last"]
    assert scored["metrics"] == {"accuracy": 0.7} and scored["examples"] == 1
    kept = main / "reports" / "precision" / "predictions" / "esnli" / "a0-2x-s0-fp32.holdout.cpu.jsonl.gz"
    assert kept.exists() and scored["predictions"] == str(kept)  # outside this checkout: as written

    git = lambda *a: subprocess.run(["git", *a], cwd=main, check=True, capture_output=True, text=True).stdout  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "t@example.com"), git("config", "user.name", "t")
    val = main / "reports" / "precision" / "predictions" / "esnli" / "a0-2x-s0-fp32.cpu.jsonl.gz"
    val.write_bytes(b"x")
    row = {"track": "esnli", "arm": "a0-2x", "seed": 0, "precision": "fp32", "commit": "abc1234",
           "metrics": {"accuracy": 0.75}, "train_wall_s": 900.0, "predictions": str(val.relative_to(main)),
           "holdout": {**scored, "predictions": str(kept.relative_to(main))}}
    rows.write_text(json.dumps(row) + "\n")
    study.commit_row(row, rows, 1, 3)
    assert sorted(git("show", "--name-only", "--format=", "HEAD").split()) == [
        "reports/precision/predictions/esnli/a0-2x-s0-fp32.cpu.jsonl.gz",
        "reports/precision/predictions/esnli/a0-2x-s0-fp32.holdout.cpu.jsonl.gz", "reports/precision/rows.jsonl"]


def test_which_runs_count_as_done():
    """A run is skipped when a row of it exists from this kind of device, in the precision asked for (the
    confirmation's own fp32 whatever is asked), and with --holdout-scores only if that row has them."""
    cpu, gpu = {"device": "cpu"}, {"device": "NVIDIA H200"}
    rows = [{"track": "esnli", "arm": "a0-2x", "seed": 0, "precision": "bf16", "machine": cpu},
            {"track": "esnli", "arm": "a0-2x", "seed": 1, "precision": "fp32", "machine": cpu, "holdout": {}},
            {"track": "esnli", "arm": "a0-2x", "seed": 2, "precision": "fp32", "machine": gpu},
            {"track": "esnli-confirm", "arm": "a0-2x", "seed": 10, "precision": "fp32", "machine": cpu}]
    assert study.done_runs(rows, "cpu", None) == {("esnli", "a0-2x", 0), ("esnli", "a0-2x", 1),
                                                  ("esnli-confirm", "a0-2x", 10)}
    assert study.done_runs(rows, "cpu", "bf16") == {("esnli", "a0-2x", 0), ("esnli-confirm", "a0-2x", 10)}
    assert study.done_runs(rows, "cpu", "fp32", holdout=True) == {("esnli", "a0-2x", 1)}
    assert study.done_runs(rows, "cpu", "bf16", holdout=True) == set()  # seed 0's bf16 row has no holdout scores
    assert study.done_runs(rows, "cuda", None) == {("esnli", "a0-2x", 2)}


def test_the_reserved_row_check_reads_test_keys_and_counts_train_file_keys_apart(tmp_path):
    """Amendment 1's check (no e-SNLI key ≥ 2000 scored outside the confirmation) reads test-file keys,
    `esnli/N`; holdout scores name rows of the released valid file, `esnli/valid-N`, which are no test rows."""
    import gzip

    kept = tmp_path / "predictions" / "esnli"
    kept.mkdir(parents=True)
    for name, keys in (("a0-s0.cpu.jsonl.gz", ["esnli/0", "esnli/1999"]),
                       ("a0-s0.holdout.cpu.jsonl.gz", ["esnli/valid-2001", "esnli/valid-9831"])):
        (kept / name).write_bytes(gzip.compress("".join(json.dumps({"key": k}) + "\n" for k in keys).encode()))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"split": "val"}) + "\n")
    assert study.esnli_rows_scored(tmp_path / "rows.jsonl") == {
        "rows": 1, "confirm_split_rows": 0, "esnli_predictions": 2, "esnli_max_key": 1999,
        "esnli_keys_from_2000": 0, "esnli_train_file_predictions": 2}
    (kept / "a0-s1.cpu.jsonl.gz").write_bytes(gzip.compress(b'{"key": "esnli/2000"}\n'))
    assert study.esnli_rows_scored(tmp_path / "rows.jsonl")["esnli_keys_from_2000"] == 1
