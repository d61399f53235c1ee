"""Teachers: anything that turns prompts into completions; a local HF model or an OpenAI-compatible server."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from .prompts import SYSTEM_PROMPT


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
    """A teacher's server refused a request in a way retrying cannot fix (4xx other than 429, a malformed reply)."""


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
