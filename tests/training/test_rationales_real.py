"""Rationale generation with real teachers: the embedded model in-process, and through a real
OpenAI-compatible server on loopback (`transformers serve` with the embedded model)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.servers import free_port, wait_until_ok
from training import base_model
from training.data import load_examples
from training.rationales.generate import generate
from training.rationales.rows import read_rows
from training.rationales.teachers import LocalHFTeacher, OpenAITeacher
from contract.tasks import get_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return base_model.materialise()


@pytest.fixture(scope="module")
def cb_examples(data_dir):
    return load_examples(get_task("cb"), "train", data_dir)[:3]


def check_rows(path: Path, examples, teacher_prefix: str, summary: dict) -> None:
    rows = [r for _, r in read_rows(path)]
    assert summary["this_run"]["written"] + summary["this_run"]["failed"] == len(examples)
    assert rows, summary
    task = get_task("cb")
    gold = {e.key: task.labels[e.label] for e in examples}
    for r in rows:
        assert r["label"] == gold[r["key"]] and r["teacher"].startswith(teacher_prefix)
        assert len(r["rationale"].split()) >= 5 and r["prompt_version"] == "label-v1"


def test_embedded_teacher_writes_rationales(smollm2, cb_examples, tmp_path):
    teacher = LocalHFTeacher(smollm2, max_new_tokens=48)
    out = tmp_path / "cb.jsonl"
    check_rows(out, cb_examples, "hf:", generate(get_task("cb"), "train", cb_examples, teacher, out, progress=False))



def test_openai_compatible_server_on_loopback(smollm2, cb_examples, tmp_path):
    port = free_port()
    cli = Path(sys.executable).parent / "transformers"
    proc = subprocess.Popen([str(cli), "serve", str(smollm2), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(f"{url}/health", timeout=120)
        teacher = OpenAITeacher(f"{url}/v1", str(smollm2), concurrency=2, max_new_tokens=48, timeout=120)
        out = tmp_path / "cb.jsonl"
        summary = generate(get_task("cb"), "train", cb_examples, teacher, out, batch_size=3, progress=False)
        check_rows(out, cb_examples, "openai:", summary)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
