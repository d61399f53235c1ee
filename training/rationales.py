"""Teacher rationales: the JSONL row format, loading/joining them for training, and resumable generation.

Row format (one JSON object per example):
    key, task, split, label (native label name), rationale, teacher, prompt_version, params, created

The paper's teacher (§E.3) sees the gold label and writes 2-5 sentences that justify it without
restating it, ending with the sentinel `[END OF REASONING]`, then `Answer: ...`.
"""
from __future__ import annotations

import gzip
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from .tasks import Example, Task, TaskError

PROMPT_VERSION = "label-v1"
COT_PROMPT_VERSION = "cot-v1"
SENTINEL = "[END OF REASONING]"
SYSTEM_PROMPT = "You are a careful teacher who explains the reasoning behind answers to reading-comprehension questions."
LABEL_PROMPT = (
    "{input}\n\nThe correct answer is: {answer}\n\n"
    "In 2 to 4 short sentences, explain why this answer is correct, using facts from the text. "
    "Do not write the answer word itself. End with " + SENTINEL + "."
)
# Unconditioned chain of thought: the teacher does not see the label; only rationales whose parsed
# answer agrees with the gold label are kept.
COT_PROMPT = (
    "{input}\n\nThink step by step in 2 to 4 short sentences, then write the final answer on the last line "
    "as 'Final Answer: X', where X is one of: {choices}."
)
MIN_WORDS, MAX_WORDS = 5, 160


def open_text(path: Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs of a rationale file (.jsonl or .jsonl.gz); bad lines name file and line.

    A truncated last line (a write cut by a kill) is skipped, since resume rewrites it.
    """
    path = Path(path)
    if not path.exists():
        raise TaskError(f"rationale file {path} does not exist")
    with open_text(path) as fh:
        lines = fh.readlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines) and not line.endswith("\n"):
                return  # torn final write
            raise TaskError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        for key in ("key", "label", "rationale"):
            if key not in row:
                raise TaskError(f"{path}:{lineno}: missing field {key!r}")
        yield lineno, row


def load_rationales(path: Path, task: Task, examples: Sequence[Example], skip_missing: bool = False,
                    split_examples: Sequence[Example] | None = None) -> dict[str, str]:
    """Rationale text by example key, joined on `key` and checked against the examples.

    Args:
        examples: the examples being trained on.
        split_examples: the whole split, when `examples` is a subset (rows for the rest are ignored).
    Raises TaskError on a key that is not in the split, a label that disagrees with the gold
    label, a duplicate key, or (unless `skip_missing`) a trained example with no rationale.
    """
    gold = {e.key: task.labels[e.label] for e in (split_examples or examples) if e.label is not None}
    wanted = {e.key for e in examples}
    found: dict[str, str] = {}
    for lineno, row in read_rows(path):
        key = row["key"]
        if key not in gold:
            raise TaskError(f"{path}:{lineno}: key {key!r} is not an example of task {task.name!r} "
                            f"(wrong task or split?)")
        if str(row["label"]) != gold[key]:
            raise TaskError(f"{path}:{lineno}: label {row['label']!r} disagrees with gold {gold[key]!r} for {key}")
        if key in found:
            raise TaskError(f"{path}:{lineno}: duplicate key {key!r}")
        found[key] = row["rationale"]
    found = {k: v for k, v in found.items() if k in wanted}
    missing = [e.key for e in examples if e.key not in found]
    if missing and not skip_missing:
        raise TaskError(f"{path}: no rationale for {len(missing)} of {len(wanted)} examples "
                        f"(first: {missing[:3]}); pass --skip-missing-rationales to train without them")
    return found


# --- post-processing -----------------------------------------------------------------------
_ANSWER_LINE = re.compile(r"^\s*(final\s+)?answer\s*[:：].*$", re.IGNORECASE | re.MULTILINE)


def clean_rationale(text: str) -> str:
    """Cut at the sentinel, drop trailing `Answer: ...` lines and reasoning headers, squeeze space."""
    text = text.split(SENTINEL)[0]
    text = text.split("[END")[0]
    text = _ANSWER_LINE.sub("", text)
    text = re.sub(r"^\s*(reasoning|explanation)\s*[:：]\s*", "", text, flags=re.IGNORECASE)
    return re.sub(r"\s+", " ", text).strip()


def reject_reason(text: str, label_word: str) -> str | None:
    """Why a cleaned rationale is unusable, or None when it is fine."""
    words = text.split()
    if not words:
        return "empty"
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(words) > MAX_WORDS:
        return "too_long"
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if len(trigrams) >= 10 and len(set(trigrams)) < 0.7 * len(trigrams):
        return "repetitive"
    restating = re.compile(rf"\b(the\s+)?(correct\s+)?answer\s+is\s*[:\"']*\s*{re.escape(label_word)}\b", re.IGNORECASE)
    if restating.search(text):
        return "restates_label"
    return None


# --- teachers ------------------------------------------------------------------------------
@dataclass
class Request:
    key: str
    prompt: str  # user message
    label_word: str
    gold: int
    label_words: tuple[str, ...] = ()  # set in CoT mode: the answer is parsed and must equal `gold`


class Teacher(Protocol):
    """Anything that turns chat prompts into completions (local HF model, OpenAI-compatible server, ...)."""

    teacher_id: str
    params: dict[str, Any]

    def complete(self, prompts: Sequence[str], attempt: int) -> list[str | None]: ...


@dataclass
class LocalHFTeacher:
    """A local HF causal LM: batched generation, left padding, bf16, chat template."""

    model_path: Path
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.2  # small teachers loop without it
    seed: int = 0
    params: dict[str, Any] = field(init=False)
    teacher_id: str = field(init=False)

    def __post_init__(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.bfloat16).eval()
        self.teacher_id = f"hf:{Path(self.model_path).name}"
        self.params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                       "top_p": self.top_p, "repetition_penalty": self.repetition_penalty, "seed": self.seed,
                       "dtype": "bfloat16"}

    def complete(self, prompts: Sequence[str], attempt: int) -> list[str]:
        import torch

        texts = [self.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": p}],
            tokenize=False, add_generation_prompt=True) for p in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        # Retries of rejected rows sample (seeded per attempt) so they can come out differently.
        sample = self.temperature > 0 or attempt > 0
        kwargs = {"do_sample": sample, "repetition_penalty": self.repetition_penalty}
        if sample:
            torch.manual_seed(self.seed + attempt)
            kwargs.update(temperature=max(self.temperature, 0.7), top_p=self.top_p if self.temperature > 0 else 0.9)
        with torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


class TeacherError(RuntimeError):
    pass


@dataclass
class OpenAITeacher:
    """Any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp, Ollama, `transformers serve`,
    hosted APIs): bounded concurrency, timeouts, retries with exponential backoff and full jitter on
    429/5xx/timeouts, honouring `Retry-After`. A prompt that still fails yields None (counted, retried
    on the next run) instead of ending the run."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout: float = 60.0
    max_retries: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    sleep: Any = time.sleep  # injectable for tests
    params: dict[str, Any] = field(init=False)
    teacher_id: str = field(init=False)

    def __post_init__(self) -> None:
        import os

        import httpx

        self.base_url = self.base_url.rstrip("/")
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=self.timeout, headers=headers,
                                   limits=httpx.Limits(max_connections=self.concurrency))
        self.teacher_id = f"openai:{self.model}@{self.base_url}"
        self.params = {"max_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                       "seed": self.seed}
        self.stats = {"retries": 0, "failures": 0}

    def complete(self, prompts: Sequence[str], attempt: int) -> list[str | None]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda p: self._one(p, attempt), prompts))

    def _one(self, prompt: str, attempt: int) -> str | None:
        import httpx

        body = {"model": self.model, "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                  {"role": "user", "content": prompt}],
                **self.params, "seed": self.seed + attempt}
        if attempt > 0 and self.temperature == 0:
            body["temperature"] = 0.7  # a rejected greedy answer would only come back the same
        for retry in range(self.max_retries + 1):
            try:
                response = self.client.post(f"{self.base_url}/chat/completions", json=body)
            except (httpx.TimeoutException, httpx.TransportError):
                wait = self._backoff(retry)
            else:
                if response.status_code == 200:
                    try:
                        return response.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        raise TeacherError(f"{self.base_url}: malformed completion: {response.text[:200]}") from exc
                if response.status_code != 429 and response.status_code < 500:
                    raise TeacherError(f"{self.base_url}: HTTP {response.status_code}: {response.text[:300]}")
                wait = retry_after(response.headers.get("retry-after")) or self._backoff(retry)
            if retry == self.max_retries:
                break
            self.stats["retries"] += 1
            self.sleep(min(wait, self.backoff_max))
        self.stats["failures"] += 1
        return None

    def _backoff(self, retry: int) -> float:
        import random

        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** retry))  # full jitter


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def label_prompt(task: Task, example: Example) -> Request:
    word = task.label_words[example.label]
    return Request(example.key, LABEL_PROMPT.format(input=task.format(example.fields), answer=word), word,
                   example.label)


def cot_prompt(task: Task, example: Example) -> Request:
    prompt = COT_PROMPT.format(input=task.format(example.fields), choices=", ".join(task.label_words))
    return Request(example.key, prompt, task.label_words[example.label], example.label, tuple(task.label_words))


def judge(req: Request, raw: str | None) -> tuple[str, str | None]:
    """(cleaned text, reject reason or None) for one completion."""
    from .contract import parse_answer

    if raw is None:
        return "", "teacher_error"
    if req.label_words:  # CoT mode: the teacher's own answer must match the gold label
        answer = parse_answer(raw, req.label_words)
        if answer is None:
            return "", "no_answer"
        if answer != req.gold:
            return "", "disagrees_with_gold"
    text = clean_rationale(raw)
    return text, reject_reason(text, req.label_word)


def done_keys(path: Path) -> set[str]:
    return {row["key"] for _, row in read_rows(path)} if Path(path).exists() else set()


def generate(task: Task, split: str, examples: Sequence[Example], teacher: Teacher, out: Path,
             batch_size: int = 8, max_retries: int = 2, progress: bool = True, mode: str = "label") -> dict[str, Any]:
    """Write one row per example to `out` (append-only, flushed per batch); skip keys already there.

    Args:
        mode: "label" (the teacher sees the gold label, as in the paper) or "cot" (it does not; rows
            whose parsed answer disagrees with the gold label are rejected).
    Rejected completions are retried up to `max_retries` times; rows that never pass are
    counted in the summary and not written. Returns (and writes next to `out`) the summary.
    """
    if mode not in ("label", "cot"):
        raise ValueError(f"mode must be 'label' or 'cot', got {mode!r}")
    make_request = label_prompt if mode == "label" else cot_prompt
    version = PROMPT_VERSION if mode == "label" else COT_PROMPT_VERSION
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(out)
    done = done_keys(out)
    todo = [make_request(task, e) for e in examples if e.label is not None and e.key not in done]
    from .contract import parse_answer

    stats = {"run_id": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "teacher": teacher.teacher_id,
             "params": teacher.params, "mode": mode, "batch_size": batch_size, "rejected": {}, "written": 0,
             "failed": 0, "skipped_done": len(done)}
    first_answers: dict[str, int | None] = {}  # CoT mode: the teacher's first answer, for the agreement rate
    started = time.time()
    bar = tqdm(total=len(todo), unit="row", disable=not progress, desc=f"rationales {task.name}/{split}")
    labels_by_key = {e.key: task.labels[e.label] for e in examples if e.label is not None}
    with open(out, "a", encoding="utf-8") as fh:
        for i in range(0, len(todo), batch_size):
            pending = todo[i:i + batch_size]
            accepted: list[tuple[Request, str]] = []
            for attempt in range(max_retries + 1):
                if not pending:
                    break
                completions = teacher.complete([r.prompt for r in pending], attempt)
                retry = []
                for req, raw in zip(pending, completions):
                    if attempt == 0 and req.label_words:
                        first_answers[req.key] = parse_answer(raw or "", req.label_words)
                    text, reason = judge(req, raw)
                    if reason is None:
                        accepted.append((req, text))
                    else:
                        stats["rejected"][reason] = stats["rejected"].get(reason, 0) + 1
                        retry.append(req)
                pending = retry
            stats["failed"] += len(pending)
            for req, text in accepted:
                row = {"key": req.key, "task": task.name, "split": split, "label": labels_by_key[req.key],
                       "rationale": text, "teacher": teacher.teacher_id, "prompt_version": version,
                       "params": teacher.params, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            stats["written"] += len(accepted)
            bar.update(len(accepted) + len(pending))
            # The summary follows the file batch by batch, so an interrupted set still describes itself.
            _write_summary(out, stats, started, first_answers, todo, finished=False)
    bar.close()
    return _write_summary(out, stats, started, first_answers, todo, finished=True)


def _write_summary(out: Path, stats: dict[str, Any], started: float, first_answers: dict, todo: list[Request],
                   finished: bool) -> dict[str, Any]:
    stats["wall_seconds"] = round(time.time() - started, 1)
    stats["run_finished"] = finished  # False while running or after a kill: resume to finish
    if first_answers:
        gold = {r.key: r.gold for r in todo}
        stats["agreement_rate"] = round(sum(a == gold[k] for k, a in first_answers.items()) / len(first_answers), 4)
    return write_summary(out, stats)


def _drop_torn_tail(path: Path) -> None:
    """A kill mid-write can leave a partial last line; cut it so appends start on a clean line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def write_summary(path: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Describe a rationale file in `<file>.summary.json`: row count, length percentiles, teachers,
    and the history of the runs that wrote it (a run that wrote nothing leaves no entry)."""
    summary_path = Path(str(path) + ".summary.json")
    previous = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    runs = previous.get("runs", [])
    if runs and runs[-1].get("run_id") == stats.get("run_id"):
        runs[-1] = stats  # the same run, a batch further on
    elif stats.get("written", 0) > 0 or not runs:
        runs.append(stats)
    rows = [row for _, row in read_rows(path)]
    lengths = sorted(len(r["rationale"].split()) for r in rows)

    def pct(q: float) -> int:
        return lengths[min(len(lengths) - 1, int(q * len(lengths)))] if lengths else 0

    summary = {"file": Path(path).name, "rows": len(rows), "words_p10_p50_p90": [pct(0.1), pct(0.5), pct(0.9)],
               "teachers": sorted({r.get("teacher", "?") for r in rows}),
               "prompt_versions": sorted({r.get("prompt_version", "?") for r in rows}), "runs": runs}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "this_run": stats}  # the caller also learns what this very run did


def default_rationale_file(task: Task, split: str = "train") -> Path | None:
    """The committed set `data/rationales/<task>.<split>.jsonl[.gz]`, if there is one."""
    from .data import REPO_ROOT

    for suffix in (".jsonl", ".jsonl.gz"):
        path = REPO_ROOT / "data" / "rationales" / f"{task.name}.{split}{suffix}"
        if path.exists():
            return path
    return None
