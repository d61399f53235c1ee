#!/usr/bin/env python3
"""Label consistency of the committed rationale sets: does a rationale point to its gold label?

For the first `--limit` rationales of each set (file order), a judge model (default: the embedded
SmolLM2-135M-Instruct, the teacher of the `label-v1` sets) is asked the task's question twice, never
shown the label: once on the input alone and once on the input followed by the rationale. Its answer is
the label word it ranks highest for the next token after "Final Answer:" (one forward pass per prompt,
no sampling). Reported per set:

- `without`: how often the judge, asked without the label or the rationale, agrees with the gold label
  (the teacher's own skill at the task when it is the teacher);
- `with`: the same with the rationale shown: a set whose rationales argue for the gold label lifts
  this above `without`; one whose rationales argue against it (or say nothing) does not;
- `majority`: the share of the most common gold label among the same rows (what always guessing it gets).

    .venv/bin/python scripts/rationale_consistency.py                    # every committed set, 100 rows each
    .venv/bin/python scripts/rationale_consistency.py --sets cb,rte --limit 50

Writes `reports/rationale-consistency.json` (rows, machine, commit, command) and prints a table.
A 135M judge is a weak reader: the numbers compare sets with each other, they do not grade them.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python scripts/...`: the repo's packages
from loadtest.provenance import report_header  # noqa: E402

RATIONALES = REPO / "data" / "rationales"


def committed_sets() -> dict[str, Path]:
    """Set name → committed train rationale file; the task is the name up to its first dot
    (`wsc.smollm2` is a second WSC set)."""
    files = [*RATIONALES.glob("*.train.jsonl"), *RATIONALES.glob("*.train.jsonl.gz")]
    return {f.name.split(".train.")[0]: f for f in sorted(files)}


def prompts(task, example, rationale: str | None) -> str:
    """The question as the judge sees it: input, optionally the rationale, and the answer words."""
    text = task.format(example.fields)
    if rationale is not None:
        text += f"\n\nReasoning: {rationale}"
    return text + f"\n\nAnswer with one of: {', '.join(task.label_words)}."


class Judge:
    """A causal LM that picks one of a task's label words after "Final Answer:"."""

    def __init__(self, path: Path, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM

        from contract.encoding import load_tokenizer

        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "left"  # the next-token logits sit at the last position for every row
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
        self.batch_size = batch_size

    def first_tokens(self, words: tuple[str, ...]) -> tuple[str, list[int]]:
        """(text that ends the prompt, first token of each label word after it). " Yes"/" No" start with
        distinct tokens; digits do not (" 1" is " " + "1"), so the space then goes into the prompt."""
        for lead in (" ", ""):
            ids = [self.tokenizer(lead + w, add_special_tokens=False)["input_ids"][0] for w in words]
            if len(set(ids)) == len(ids):
                return ("" if lead else " "), ids
        raise ValueError(f"label words {words} share a first token; this judge cannot tell them apart")

    def render(self, user: str) -> str:
        if self.tokenizer.chat_template:
            chat = [{"role": "user", "content": user}]
            return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + "Final Answer:"
        return user + "\nFinal Answer:"

    def answers(self, users: list[str], words: tuple[str, ...]) -> list[int]:
        """Index of the label word the judge ranks highest, per prompt."""
        import torch

        tail, ids = self.first_tokens(words)
        choices = torch.tensor(ids)
        picked: list[int] = []
        for i in range(0, len(users), self.batch_size):
            texts = [self.render(u) + tail for u in users[i:i + self.batch_size]]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                                   truncation=True, max_length=1024)
            with torch.inference_mode():
                # only the last position's vocabulary projection: the LM head over every position is most
                # of the cost on a CPU
                logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :]
            picked += logits[:, choices].argmax(dim=-1).tolist()
        return picked


def check_set(judge: Judge, name: str, path: Path, limit: int, data_dir: Path | None) -> dict:
    from contract.tasks import get_task
    from training.data import load_examples
    from training.rationales.rows import load_rationales, read_rows

    task = get_task(name.split(".")[0])
    examples = load_examples(task, "train", data_dir)
    by_key = {e.key: e for e in examples}
    checked = load_rationales(path, task, examples, skip_missing=True)  # keys and labels agree with the split
    picked = [row for _, row in read_rows(path) if row["key"] in checked][:limit]  # file order
    rows = [(by_key[r["key"]], r["rationale"]) for r in picked]
    gold = [e.label for e, _ in rows]
    started = time.time()
    without = judge.answers([prompts(task, e, None) for e, _ in rows], task.label_words)
    with_r = judge.answers([prompts(task, e, r) for e, r in rows], task.label_words)
    agree = lambda picks: sum(p == g for p, g in zip(picks, gold)) / len(gold)  # noqa: E731
    teachers = Counter(r.get("teacher", "?") for r in picked)
    return {"set": path.name, "task": task.name, "rows": len(rows), "teachers": dict(teachers),
            "without": round(agree(without), 4), "with": round(agree(with_r), 4),
            "majority": round(Counter(gold).most_common(1)[0][1] / len(gold), 4),
            "seconds": round(time.time() - started, 1)}


def table(results: list[dict]) -> str:
    lines = ["| set | teacher(s) | rows | judge without rationale | judge with rationale | lift | majority label |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        who = ", ".join(sorted(r["teachers"]))
        lines.append(f"| `{r['set']}` | {who} | {r['rows']} | {r['without']:.3f} | {r['with']:.3f} "
                     f"| {100 * (r['with'] - r['without']):+.1f} | {r['majority']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=None, help="comma-separated set names, e.g. cb,wsc.smollm2 (default: all)")
    parser.add_argument("--limit", type=int, default=100, help="rationales per set, in file order")
    parser.add_argument("--judge", type=Path, default=None, help="HF model folder (default: the embedded backbone)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "rationale-consistency.json")
    args = parser.parse_args()
    from training.base_model import default_base_dir

    sets = committed_sets()
    wanted = args.sets.split(",") if args.sets else list(sets)
    unknown = [s for s in wanted if s not in sets]
    if unknown:
        parser.error(f"no committed rationale set for {unknown}; have {sorted(sets)}")
    judge_path = args.judge or default_base_dir()
    judge = Judge(judge_path)
    results = []
    for name in wanted:
        results.append(check_set(judge, name, sets[name], args.limit, args.data_dir))
        print(json.dumps(results[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"judge": Path(judge_path).name, "limit": args.limit, "results": results,
                                    **report_header()}, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
