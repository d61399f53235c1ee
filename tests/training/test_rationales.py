"""Rationale post-processing, the join with training examples, and resumable generation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.data import load_examples
from training.rationales.generate import generate
from training.rationales.judge import clean_rationale, reject_reason
from training.rationales.rows import load_rationales, read_rows
from contract.tasks import TaskError, get_task

from ..conftest import write_rationales
from .fakes import EchoTeacher


def test_clean_cuts_the_sentinel_and_the_answer_line():
    raw = "Reasoning: The man is at home, so he went home.\n[END OF REASONING]\nAnswer: Yes"
    assert clean_rationale(raw) == "The man is at home, so he went home."
    assert clean_rationale("It follows from the text.\nFinal Answer: No") == "It follows from the text."


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("Too short.", "too_short"), ("word " * 200, "too_long"),
    ("So the answer is Yes because the premise says so.", "restates_label"),
    ("the cat sat on the mat " * 6, "repetitive"),
    ("The premise says he went home, which directly supports the hypothesis.", None),
])
def test_reject_reasons(text, reason):
    assert reject_reason(clean_rationale(text), "Yes") == reason


@pytest.fixture()
def cb_train(data_dir):
    task = get_task("cb")
    return task, load_examples(task, "train", data_dir)


def test_join_accepts_a_complete_file(tmp_path, cb_train):
    task, examples = cb_train
    path = write_rationales(tmp_path / "r.jsonl", "cb", examples)
    joined = load_rationales(path, task, examples)
    assert len(joined) == len(examples) and joined[examples[3].key].endswith(f"({examples[3].key})")


def test_join_fails_on_missing_keys_unless_asked_to_skip(tmp_path, cb_train):
    task, examples = cb_train
    path = write_rationales(tmp_path / "r.jsonl", "cb", examples[:-2])
    with pytest.raises(TaskError, match="no rationale for 2 of 250"):
        load_rationales(path, task, examples)
    assert len(load_rationales(path, task, examples, skip_missing=True)) == 248


def test_join_fails_on_foreign_keys_and_wrong_labels(tmp_path, cb_train, data_dir):
    task, examples = cb_train
    rte = load_examples(get_task("rte"), "train", data_dir, limit=3)
    path = write_rationales(tmp_path / "r.jsonl", "rte", rte)
    with pytest.raises(TaskError, match=r"r.jsonl:1: key 'rte/0' is not an example of task 'cb'"):
        load_rationales(path, task, examples)
    rows = [json.loads(line) for line in write_rationales(tmp_path / "w.jsonl", "cb", examples).read_text().splitlines()]
    rows[5]["label"] = "neutral" if rows[5]["label"] != "neutral" else "entailment"
    (tmp_path / "w.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskError, match=r"w.jsonl:6: label .* disagrees with gold"):
        load_rationales(tmp_path / "w.jsonl", task, examples)


COMMITTED = sorted(p for p in (Path(__file__).resolve().parents[2] / "data" / "rationales").iterdir()
                   if p.name.endswith((".jsonl", ".jsonl.gz")))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_rationale_sets_load_in_training(path, data_dir):
    task = get_task(path.name.split(".")[0])
    examples = load_examples(task, "train", data_dir)
    joined = load_rationales(path, task, examples, skip_missing=True)
    assert joined and all(len(t.split()) >= 3 for t in joined.values())
    assert Path(str(path) + ".summary.json").exists()  # teacher, parameters and quality summary travel with it


def test_human_explanations_import_with_labels_checked(tmp_path, data_dir):
    from training.rationales.imports import import_rationales

    copa = get_task("copa")
    examples = load_examples(copa, "train", data_dir)
    summary = import_rationales("copa_sse", copa, "train", examples, data_dir, tmp_path / "copa.jsonl")
    assert summary["rows"] == 400 and summary["this_run"]["unmatched"] == 0
    assert len(load_rationales(tmp_path / "copa.jsonl", copa, examples)) == 400
    wsc = get_task("wsc")
    summary = import_rationales("winowhy", wsc, "train", load_examples(wsc, "train", data_dir), data_dir,
                                tmp_path / "wsc.jsonl")
    assert summary["rows"] > 300 and summary["this_run"]["matched"] == summary["rows"]
    with pytest.raises(TaskError, match="import:winowhy is for task 'wsc'"):
        import_rationales("winowhy", copa, "train", examples, data_dir, tmp_path / "x.jsonl")


def test_generate_retries_rejections_and_writes_a_summary(tmp_path, cb_train):
    task, examples = cb_train
    out = tmp_path / "cb.train.jsonl"
    summary = generate(task, "train", examples[:20], EchoTeacher(), out, batch_size=8, progress=False)
    rows = [r for _, r in read_rows(out)]
    assert len(rows) == 20 and summary["rows"] == 20
    assert all(r["teacher"] == "echo" and r["prompt_version"] and "[END" not in r["rationale"] for r in rows)
    assert json.loads(Path(str(out) + ".summary.json").read_text())["rows"] == 20
    # a second run skips what is done
    again = generate(task, "train", examples[:20], EchoTeacher(), out, progress=False)
    assert again["this_run"]["written"] == 0 and again["this_run"]["skipped_done"] == 20


def test_generation_resumes_after_kill_without_duplicates_or_gaps(tmp_path, cb_train):
    """kill -9 mid-run, then resume: every key exactly once."""
    task, examples = cb_train
    out = tmp_path / "cb.jsonl"
    script = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from fakes import EchoTeacher
from training.data import load_examples
from training.rationales.generate import generate
from contract.tasks import get_task
task = get_task("cb")
generate(task, "train", load_examples(task, "train")[:60], EchoTeacher(delay=0.3), {str(out)!r}, batch_size=4,
         progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    deadline = time.time() + 60
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 12):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(out.read_text().splitlines())
    assert 12 <= partial < 60
    generate(task, "train", examples[:60], EchoTeacher(), out, batch_size=8, progress=False)
    keys = [r["key"] for _, r in read_rows(out)]
    assert sorted(keys) == sorted(e.key for e in examples[:60]) and len(keys) == len(set(keys))


class AnsweringTeacher:
    """Answers 'Yes' for every prompt after some reasoning, for the CoT mode."""

    teacher_id = "answering"
    params: dict = {}

    def complete(self, prompts, attempt):
        return ["The premise and hypothesis agree on the facts stated.\nFinal Answer: Yes"] * len(prompts)


def test_cot_mode_keeps_only_rationales_that_agree_with_gold(tmp_path, cb_train):
    task, examples = cb_train
    out = tmp_path / "cot.jsonl"
    summary = generate(task, "train", examples[:30], AnsweringTeacher(), out, progress=False, mode="cot",
                       max_retries=0)
    rows = [r for _, r in read_rows(out)]
    yes = [e for e in examples[:30] if task.label_words[e.label] == "Yes"]
    assert {r["key"] for r in rows} == {e.key for e in yes}
    assert all("Final Answer" not in r["rationale"] and r["prompt_version"] == "cot-v1" for r in rows)
    assert summary["this_run"]["agreement_rate"] == round(len(yes) / 30, 4)
    assert summary["this_run"]["rejected"]["disagrees_with_gold"] == 30 - len(yes)


def test_palm_completions_are_cut_at_the_next_few_shot_example():
    from training.rationales.imports import parse_palm

    nli = "The premise mentions a senator. So the answer is entailment.\n\nPremise: Another example..."
    assert parse_palm(nli) == ("The premise mentions a senator.", "entailment")
    cqa = "Only a train station fits. So the answer is (c) train station.\n\nQ: next"
    assert parse_palm(cqa) == ("Only a train station fits.", "c")
    assert parse_palm("The packages may not be from lunch.\nAnswer: neutral\n\nPremise: x") == (
        "The packages may not be from lunch.", "neutral")
    assert parse_palm("No answer line here.") is None


def test_palm_import_keeps_only_rows_agreeing_with_gold(tmp_path, data_dir):
    from training.rationales.imports import import_rationales

    task = get_task("anli1")
    examples = load_examples(task, "train", data_dir)
    summary = import_rationales("palm_cot", task, "train", examples, data_dir, tmp_path / "a.jsonl")
    stats = summary["this_run"]
    assert summary["rows"] == stats["matched"] and stats["matched"] + stats["label_disagrees"] + stats["no_answer"] + \
        stats["empty"] == len(examples)
    assert len(load_rationales(tmp_path / "a.jsonl", task, examples, skip_missing=True)) == summary["rows"]


def test_flan_import_takes_the_rationale_column(tmp_path, data_dir):
    from training.rationales.imports import import_rationales

    task = get_task("strategyqa")
    examples = load_examples(task, "train", data_dir)
    summary = import_rationales("flan", task, "train", examples, data_dir, tmp_path / "s.jsonl")
    assert summary["rows"] == len(examples)
    joined = load_rationales(tmp_path / "s.jsonl", task, examples)
    assert "Genghis Khan had sixteen children" in joined["strategyqa/0"]
