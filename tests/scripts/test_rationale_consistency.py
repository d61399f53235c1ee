"""The rationale label-consistency check: what it counts, on a judge we control and on a tiny real model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tests.conftest import write_rationales

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("rationale_consistency", REPO / "scripts" / "rationale_consistency.py")
consistency = importlib.util.module_from_spec(spec)
spec.loader.exec_module(consistency)  # type: ignore[union-attr]


class ReadsTheRationale:
    """A judge that answers "Yes" when the rationale says "entailed" and "No" otherwise."""

    def answers(self, users: list[str], words: tuple[str, ...]) -> list[int]:
        return [words.index("Yes") if "entailed" in u.split("Reasoning:")[-1] and "Reasoning:" in u
                else words.index("No") for u in users]


def cb_set(tmp_path: Path, data_dir: Path, rows: int) -> Path:
    from contract.tasks import get_task
    from training.data import load_examples

    examples = load_examples(get_task("cb"), "train", data_dir)[:rows]
    path = tmp_path / "cb.train.jsonl"
    with path.open("w") as f:
        for e in examples:  # a rationale that argues for the gold label exactly when it is entailment
            text = "It is entailed." if e.label == 0 else "Nothing follows."
            f.write(json.dumps({"key": e.key, "task": "cb", "split": "train", "label": ("entailment", "contradiction",
                                "neutral")[e.label], "rationale": text, "teacher": "test"}) + "\n")
    return path


def test_a_rationale_that_names_the_answer_lifts_agreement_above_the_question_alone(tmp_path, data_dir):
    path = cb_set(tmp_path, data_dir, 40)
    result = consistency.check_set(ReadsTheRationale(), "cb", path, limit=30, data_dir=data_dir)
    gold = [json.loads(line)["label"] for line in path.read_text().splitlines()][:30]
    assert result["rows"] == 30 and result["teachers"] == {"test": 30}
    # without the rationale this judge always says "No" (contradiction): right on the contradiction rows only
    assert result["without"] == round(gold.count("contradiction") / 30, 4)
    # with it, right on entailment and contradiction rows: only the neutral ones stay wrong
    assert result["with"] == round(1 - gold.count("neutral") / 30, 4)
    assert result["majority"] == round(max(gold.count(g) for g in set(gold)) / 30, 4)


def test_a_real_model_judges_every_row_with_one_of_the_label_words(tmp_path, data_dir, tiny_backbone):
    from contract.tasks import get_task
    from training.data import load_examples

    examples = load_examples(get_task("rte"), "train", data_dir)[:6]
    path = write_rationales(tmp_path / "rte.train.jsonl", "rte", examples)
    judge = consistency.Judge(tiny_backbone, batch_size=4)
    result = consistency.check_set(judge, "rte", path, limit=10, data_dir=data_dir)
    assert result["rows"] == 6 and 0 <= result["without"] <= 1 and 0 <= result["with"] <= 1
    assert len(judge.answers(["a question"] * 5, ("Yes", "No"))) == 5


def test_every_committed_set_is_found_by_its_task_name():
    sets = consistency.committed_sets()
    assert {"cb", "rte", "boolq", "esnli", "creak"} <= set(sets)
    assert all(p.exists() and p.name.startswith(name + ".train.") for name, p in sets.items())


def test_label_words_that_share_a_leading_space_token_are_told_apart_without_it(tiny_backbone):
    judge = consistency.Judge(tiny_backbone)
    judge.tokenizer = SplitsDigits(judge.tokenizer)
    tail, ids = judge.first_tokens(("1", "2"))
    assert tail == " " and len(set(ids)) == 2
    assert judge.first_tokens(("Yes", "No"))[0] == ""


class SplitsDigits:
    """A tokenizer whose " 1" and " 2" both start with a lone space token, as SmolLM2's do."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, **kwargs):
        if text[:1] == " " and text[1:].isdigit():
            return {"input_ids": [0] + self.inner(text[1:], **kwargs)["input_ids"]}
        return self.inner(text, **kwargs)
