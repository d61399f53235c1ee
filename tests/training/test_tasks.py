"""Task declarations, data loading with clear errors, and the official metrics."""
from __future__ import annotations

import json

import pytest

from training.data import load_examples
from training.evaluate import compute_metrics
from contract.tasks import TASK_NAMES, Example, TaskError, get_task


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_reads_train_and_val_and_formats_its_examples(name, data_dir):
    task = get_task(name)
    for split in ("train", "val"):
        examples = load_examples(task, split, data_dir, limit=50)
        assert examples and all(e.label is not None and 0 <= e.label < task.num_labels for e in examples)
        text = task.format(examples[0].fields)
        assert text.startswith("Passage:\n") and "Question:\n" in text
        assert len({e.key for e in examples}) == len(examples)


def test_split_sizes_match_sources(data_dir):
    assert len(load_examples(get_task("cb"), "val", data_dir)) == 56
    assert len(load_examples(get_task("boolq"), "train", data_dir)) == 2300
    assert len(load_examples(get_task("boolq"), "val", data_dir)) == 970
    assert len(load_examples(get_task("multirc"), "val", data_dir)) == 4848  # one example per answer


def test_native_label_sets():
    assert get_task("cb").labels == ("entailment", "contradiction", "neutral")
    assert get_task("copa").labels == ("choice1", "choice2")
    assert get_task("rte").label_index("not_entailment") == 1
    assert get_task("wic").label_index(True) == 1 and get_task("wic").label_index(False) == 0


def test_wic_marks_the_target_word_and_wsc_the_pronoun():
    wic = get_task("wic").format({"word": "class", "sentence1": "An emerging professional class.",
                                  "sentence2": "He showed real class.", "start1": 25, "end1": 30})
    assert "professional *class*." in wic and "real *class*." in wic  # offsets, then fallback search
    wsc = get_task("wsc").format({"text": "The cat sat because it was tired .", "span1_text": "The cat",
                                  "span2_text": "it", "span2_index": 4})
    assert "because *it* was" in wsc and 'refer to "The cat"' in wsc


def test_multirc_keys_go_down_to_the_answer(data_dir):
    examples = load_examples(get_task("multirc"), "val", data_dir, limit=5)
    assert examples[0].key.count("/") == 3 and examples[0].group == examples[1].group
    assert "<b>" not in get_task("multirc").format(examples[0].fields)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(TaskError, match="unknown task 'nope'.*cb"):
        get_task("nope")


def test_label_outside_the_set_names_file_and_line(tmp_path):
    spec = {"name": "toy", "labels": ["neg", "pos"], "train": "train.jsonl"}
    (tmp_path / "toy.json").write_text(json.dumps(spec))
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "meh", "label": "maybe"}\n')
    with pytest.raises(TaskError, match=r"train.jsonl:2: .*label 'maybe' is not one of \['neg', 'pos'\]"):
        load_examples(get_task(f"custom:{tmp_path / 'toy.json'}"), "train")


def test_bad_json_and_missing_field_name_file_and_line(tmp_path):
    spec = {"name": "toy", "labels": ["neg", "pos"], "template": "Review: {review}", "train": "t.jsonl"}
    (tmp_path / "toy.json").write_text(json.dumps(spec))
    (tmp_path / "t.jsonl").write_text('{"review": "ok", "label": "pos"}\n{not json}\n')
    with pytest.raises(TaskError, match=r"t.jsonl:2: invalid JSON"):
        load_examples(get_task(str(tmp_path / "toy.json")), "train")
    (tmp_path / "t.jsonl").write_text('{"text": "ok", "label": "pos"}\n')
    with pytest.raises(TaskError, match=r"t.jsonl:1: .*missing field\(s\) \['review'\]"):
        load_examples(get_task(str(tmp_path / "toy.json")), "train")


def test_missing_data_file_says_where_it_looked(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_examples(get_task("cb"), "train", tmp_path)


def test_custom_task_is_one_small_declaration(tmp_path):
    spec = {"name": "Sentiment", "labels": ["negative", "positive"], "label_words": ["No", "Yes"],
            "template": "Review:\n{text}\nIs the review positive?", "train": "train.jsonl", "val": "val.jsonl"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    for split in ("train", "val"):
        (tmp_path / f"{split}.jsonl").write_text('{"text": "great film", "label": "positive"}\n'
                                                 '{"text": "dull", "label": "negative"}\n')
    task = get_task(f"custom:{tmp_path / 'spec.json'}")
    examples = load_examples(task, "train")
    assert task.name == "sentiment" and task.fields == ("text",)
    assert [e.key for e in examples] == ["sentiment/0", "sentiment/1"] and [e.label for e in examples] == [1, 0]
    assert task.format(examples[0].fields) == "Review:\ngreat film\nIs the review positive?"


def test_cb_metrics_are_accuracy_and_macro_f1():
    task = get_task("cb")
    examples = [Example(f"cb/{i}", {}, g) for i, g in enumerate([0, 0, 1, 2])]
    m = compute_metrics(task, examples, [0, 1, 1, 2])
    assert m["accuracy"] == 0.75
    assert m["f1_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)


def test_multirc_metrics_are_f1a_and_exact_match():
    task = get_task("multirc")
    ex = [Example("m/0/0/0", {}, 1, "q0"), Example("m/0/0/1", {}, 0, "q0"), Example("m/0/1/2", {}, 1, "q1")]
    m = compute_metrics(task, ex, [1, 0, 0])
    assert m["em"] == 0.5  # q0 all right, q1 wrong
    assert m["f1a"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))


@pytest.mark.parametrize("name", ["esnli", "anli1", "cqa", "creak", "strategyqa", "sensemaking", "qasc", "ecqa"])
def test_extra_tasks_read_both_splits(name, data_dir):
    task = get_task(name)
    train, val = load_examples(task, "train", data_dir), load_examples(task, "val", data_dir)
    assert train and val and all(e.label is not None for e in train + val)
    assert all(task.format(e.fields) for e in train[:50] + val[:50])


def test_flan_files_are_split_90_10_by_input_hash(data_dir):
    task = get_task("creak")
    train, val = load_examples(task, "train", data_dir), load_examples(task, "val", data_dir)
    assert 0.08 < len(val) / (len(train) + len(val)) < 0.12
    assert not {e.key for e in train} & {e.key for e in val}


def test_a_split_holds_only_its_declared_rows_and_never_reads_past_them(tmp_path):
    """e-SNLI's test file is three splits of ours; a split with `split_rows` yields only its rows and
    stops reading at its end (here, a row past the end is not even valid JSON)."""
    from dataclasses import replace

    data = tmp_path / "nli.jsonl"
    rows = [json.dumps({"premise": f"p{i}", "hypothesis": "h", "label": 0}) for i in range(6)]
    data.write_text("\n".join(rows + ["{not json: the reserved rows are never parsed"]) + "\n")
    task = replace(get_task("esnli"), splits={"val": str(data), "confirm": str(data)},
                   split_rows={"val": (0, 2), "confirm": (2, 6)})
    assert [e.key for e in load_examples(task, "val")] == ["esnli/0", "esnli/1"]
    assert [e.key for e in load_examples(task, "confirm")] == [f"esnli/{i}" for i in range(2, 6)]
    assert [e.key for e in load_examples(task, "confirm", limit=2)] == ["esnli/2", "esnli/3"]


def test_esnli_train_keys_name_the_valid_file_so_none_reads_as_a_test_row(tmp_path):
    """e-SNLI's train split is the released valid file; row N of it is not test row N (which may be a
    confirmation or reserved row), so its keys say `valid-N`. Test-file keys stay `esnli/N`."""
    from dataclasses import replace

    data = tmp_path / "nli.jsonl"
    data.write_text("".join(json.dumps({"premise": f"p{i}", "hypothesis": "h", "label": 0}) + "\n" for i in range(3)))
    task = replace(get_task("esnli"), splits={"train": str(data), "val": str(data)})
    assert [e.key for e in load_examples(task, "train")] == ["esnli/valid-0", "esnli/valid-1", "esnli/valid-2"]
    assert [e.key for e in load_examples(task, "val")] == ["esnli/0", "esnli/1", "esnli/2"]


def test_esnli_rows_6000_and_later_belong_to_no_split():
    task = get_task("esnli")
    test_file_splits = [s for s, path in task.splits.items() if path.endswith("esnli_test.json")]
    assert sorted(test_file_splits) == ["confirm", "val"]
    assert task.split_rows == {"val": (0, 2000), "confirm": (2000, 6000)}
