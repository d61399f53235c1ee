"""The `dhrd` training commands end to end on a tiny random model: train, resume after kill -9,
DDP under torchrun, evaluate and export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.cli import main
from training.config import TrainConfig
from training.data import load_examples
from training.splits import is_held_out, validation_examples
from contract.tasks import get_task

from ..conftest import write_rationales

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cb_rationales(tmp_path_factory, data_dir):
    examples = load_examples(get_task("cb"), "train", data_dir)
    return write_rationales(tmp_path_factory.mktemp("rat") / "cb.train.jsonl", "cb", examples)


def train_args(backbone, out, rationales, *extra):
    return ["train", "--task", "cb", "--backbone", str(backbone), "--out", str(out), "--rationales", str(rationales),
            "--train-limit", "24", "--eval-limit", "8", "--batch-size", "4", "--grad-accum", "1",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_backbone, cb_rationales):
    out = tmp_path_factory.mktemp("runs") / "cb"
    assert main(train_args(tiny_backbone, out, cb_rationales, "--epochs", "2")) == 0
    return out


def test_train_writes_config_log_best_and_summary(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["steps"] == 12 and len(summary["history"]) == 2
    rows = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert all(r["lm_loss"] > 0 and r["cls_loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    # memory is logged every step, so growth over a run can be read from log.jsonl
    assert all(0 < r["rss_mb"] <= r["peak_rss_mb"] for r in rows)
    assert summary["peak_rss_mb_this_process"] >= rows[-1]["peak_rss_mb"]
    assert (trained_run / "best" / "trainable.safetensors").exists()
    assert summary["data"]["rationales_used"] == 24


def test_alpha_zero_trains_without_rationales(tmp_path, tiny_backbone):
    out = tmp_path / "a0"
    assert main(["train", "--task", "cb", "--alpha", "0", "--backbone", str(tiny_backbone), "--out", str(out),
                 "--rationales", str(tmp_path / "does-not-exist.jsonl"), "--max-steps", "2", "--train-limit", "8",
                 "--eval-limit", "4", "--batch-size", "4", "--grad-accum", "1", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["lm_loss"] == 0 for r in rows)


def test_lora_trains_only_adapters_and_head(tmp_path, tiny_backbone, cb_rationales):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    assert main(train_args(tiny_backbone, out, cb_rationales, "--lora", "--lora-r", "4", "--max-steps", "2")) == 0
    keys = load_file(str(out / "best" / "trainable.safetensors")).keys()
    assert keys and all("lora_" in k or k.startswith("head.") for k in keys)


def test_bad_config_fails_fast_with_a_message(tmp_path, tiny_backbone, cb_rationales, capsys):
    assert main(train_args(tiny_backbone, tmp_path / "x", cb_rationales, "--alpha", "-1")) == 2
    assert "alpha must be >= 0, got -1.0" in capsys.readouterr().err
    assert main(["train", "--task", "cbx", "--out", str(tmp_path / "y"), "--backbone", str(tiny_backbone)]) == 2
    assert "unknown task 'cbx'" in capsys.readouterr().err
    assert main(train_args(tiny_backbone, tmp_path / "z", tmp_path / "missing.jsonl")) == 2
    assert "rationale file" in capsys.readouterr().err


def test_evaluate_writes_predictions_and_metrics(trained_run):
    assert main(["evaluate", str(trained_run), "--limit", "8"]) == 0
    metrics = json.loads((trained_run / "eval" / "val.metrics.json").read_text())
    assert set(metrics["metrics"]) == {"accuracy", "f1_macro", "score"}
    preds = (trained_run / "eval" / "val.predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in preds]
    assert len(rows) == 8 and all(set(r) == {"key", "pred", "gold", "probs"} for r in rows)
    labels = get_task("cb").labels
    assert all(r["pred"] in labels and r["gold"] in labels for r in rows)
    # pred is the argmax of probs (in the task's label order), gold the example's own label
    assert all(labels[max(range(len(labels)), key=r["probs"].__getitem__)] == r["pred"] for r in rows)
    gold = {e.key: labels[e.label] for e in load_examples(get_task("cb"), "val")[:8]}
    assert {r["key"]: r["gold"] for r in rows} == gold


def test_export_has_no_lm_head_and_matches_training_logits(trained_run, tmp_path, tiny_backbone):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from contract.export_reader import load_export

    out = tmp_path / "export"
    assert main(["export", str(trained_run), "--out", str(out), "--dtype", "float32", "--verify-examples", "8"]) == 0
    state = load_file(str(out / "model.safetensors"))
    assert not any("lm_head" in k for k in state)
    backbone_params = sum(p.numel() for p in AutoModel.from_pretrained(tiny_backbone).parameters())
    head_params = sum(v.numel() for k, v in state.items() if k.startswith("head."))
    assert sum(v.numel() for v in state.values()) == backbone_params + head_params
    verify = json.loads((out / "verify.json").read_text())
    assert verify["argmax_agreement"] == 1.0 and verify["max_prob_diff"] < 1e-3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "cb" and manifest["labels"] == ["entailment", "contradiction", "neutral"]
    assert manifest["training"]["alpha"] == 1.0 and manifest["data"]["rationales_sha256"]
    loaded = load_export(out, dtype=torch.float32)
    assert not any("lm_head" in name for name, _ in loaded.model.named_parameters())


def test_lora_export_merges_adapters(tmp_path, tiny_backbone, cb_rationales):
    run = tmp_path / "lora"
    assert main(train_args(tiny_backbone, run, cb_rationales, "--lora", "--max-steps", "2", "--lr", "1e-2")) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--dtype", "float32", "--verify-examples", "4"]) == 0
    from safetensors.torch import load_file

    assert not any("lora" in k for k in load_file(str(tmp_path / "e" / "model.safetensors")))


def _log_steps(run: Path) -> list[int]:
    path = run / "log.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_resume_after_kill_9_loses_at_most_one_interval(tmp_path, tiny_backbone, cb_rationales):
    """Train in a subprocess, SIGKILL it mid-epoch, resume, and end where an uninterrupted run ends."""
    args = train_args(tiny_backbone, tmp_path / "run", cb_rationales, "--epochs", "3", "--save-every", "2",
                      "--train-limit", "48", "--batch-size", "2")
    # The tiny model trains in milliseconds a step; slow each logged step down so the kill lands mid-run.
    slow = ("import sys, time\nimport training.loop as loop\nlog = loop._log_step\n"
            "loop._log_step = lambda *a: (time.sleep(0.15), log(*a))\n"
            "from training.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 120
    while time.time() < deadline and len(_log_steps(tmp_path / "run")) < 9:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(_log_steps(tmp_path / "run"))
    assert 9 <= killed_at < 72
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert killed_at - ckpt["state"]["step"] <= 2  # at most one save interval lost
    assert main([*args, "--resume"]) == 0
    resumed = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert resumed["steps"] == 72

    assert main(train_args(tiny_backbone, tmp_path / "ref", cb_rationales, "--epochs", "3", "--save-every", "2",
                           "--train-limit", "48", "--batch-size", "2")) == 0
    reference = json.loads((tmp_path / "ref" / "summary.json").read_text())
    # Same data order and RNG after resume: the final validation matches the uninterrupted run.
    assert resumed["history"][-1]["val"] == pytest.approx(reference["history"][-1]["val"], abs=1e-6)


def test_resume_refuses_a_changed_config(tmp_path, tiny_backbone, cb_rationales, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_backbone, run, cb_rationales, "--max-steps", "1")) == 0
    assert main(train_args(tiny_backbone, run, cb_rationales, "--max-steps", "1", "--alpha", "0.5", "--resume")) == 2
    assert "different config: ['alpha']" in capsys.readouterr().err
    assert main(train_args(tiny_backbone, run, cb_rationales, "--max-steps", "1")) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(tmp_path, tiny_backbone, cb_rationales):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training.cli", *train_args(tiny_backbone, out, cb_rationales, "--max-steps", "3", "--threads", "1")]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    assert (out / "best" / "trainable.safetensors").exists()


def test_only_with_rationales_gives_alpha_zero_the_same_examples(tmp_path, tiny_backbone, data_dir):
    examples = load_examples(get_task("cb"), "train", data_dir)
    partial = write_rationales(tmp_path / "partial.jsonl", "cb", examples[:10])
    for alpha in ("0", "1"):
        out = tmp_path / f"a{alpha}"
        assert main(["train", "--task", "cb", "--alpha", alpha, "--backbone", str(tiny_backbone), "--out", str(out),
                     "--rationales", str(partial), "--only-with-rationales", "--max-steps", "1", "--eval-limit", "4",
                     "--batch-size", "4", "--grad-accum", "1", "--no-progress"]) == 0
        assert json.loads((out / "summary.json").read_text())["data"]["train_examples"] == 10


def test_linear_head_exports_an_hf_sequence_classification_model_with_the_same_logits(tmp_path, tiny_backbone,
                                                                                      cb_rationales, data_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from contract.export_reader import load_export
    from contract.encoding import encode_input
    from contract.model import pad_batch

    run = tmp_path / "run"
    assert main(train_args(tiny_backbone, run, cb_rationales, "--head", "linear", "--max-steps", "2")) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "ours"), "--dtype", "float32", "--verify-examples", "4",
                 "--hf-seqcls", str(tmp_path / "hf")]) == 0
    ours = load_export(tmp_path / "ours", dtype=torch.float32)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.config.id2label[0] == "entailment" and type(hf).__name__ == "LlamaForSequenceClassification"
    task = get_task("cb")
    texts = [task.format(e.fields) for e in load_examples(task, "val", data_dir, limit=3)]
    ids, mask = pad_batch([encode_input(tok, t, 512)[0] for t in texts], tok.pad_token_id, "right")
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits, ours.model(ids, mask),
                                   atol=1e-5, rtol=1e-5)


def test_mlp_head_refuses_the_hf_layout(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--out", str(tmp_path / "o"), "--hf-seqcls", str(tmp_path / "h")]) == 2
    assert "--head linear" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_token_count_does_not_depend_on_log_interval(tmp_path, tiny_backbone, cb_rationales):
    counts = []
    for every in ("1", "3"):
        out = tmp_path / f"log{every}"
        assert main(train_args(tiny_backbone, out, cb_rationales, "--max-steps", "6", "--log-every", every)) == 0
        counts.append(json.loads((out / "summary.json").read_text())["tokens"])
    assert counts[0] == counts[1] > 0


def test_train_ends_with_a_summary_and_the_command_to_export(tmp_path, tiny_backbone, cb_rationales, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_args(tiny_backbone, "runs/cb-x", cb_rationales, "--max-steps", "2")) == 0
    out = capsys.readouterr().out
    paragraph, command = out.rstrip().split("\n\n")[-2:]
    summary = json.loads((tmp_path / "runs" / "cb-x" / "summary.json").read_text())
    assert paragraph.strip().startswith("Trained cb as DHRD (alpha 1, beta 1) with full fine-tuning: 2 optimizer steps")
    assert f"{summary['tokens']:,} tokens" in paragraph
    assert "accuracy" in paragraph and "f1_macro" in paragraph and "runs/cb-x/best/" in paragraph
    # the next command names the console script beside this interpreter, so it runs as printed
    from training.cli import dhrd_command

    assert command.strip() == f"{dhrd_command()} export runs/cb-x --out exports/cb-x"


def test_holdout_validates_on_a_fixed_slice_of_train_that_is_never_trained_on(tmp_path, tiny_backbone,
                                                                                cb_rationales, data_dir):
    task = get_task("cb")
    cfg = TrainConfig(task="cb", out=tmp_path / "x", holdout=0.2, data_dir=data_dir)
    split = load_examples(task, "train", data_dir)
    held = validation_examples(cfg, task, split)
    trained = [e for e in split if not is_held_out(cfg, task, e)]
    assert held and trained and not {e.key for e in held} & {e.key for e in trained}
    assert 0.1 < len(held) / (len(held) + len(trained)) < 0.3
    # the slice does not move with the seed or the train limit, so arms and seeds are scored on the same one
    other = TrainConfig(task="cb", out=tmp_path / "y", holdout=0.2, data_dir=data_dir, seed=7, train_limit=5)
    assert [e.key for e in validation_examples(other, task, split)] == [e.key for e in held]

    out = tmp_path / "run"
    assert main(train_args(tiny_backbone, out, cb_rationales, "--holdout", "0.2", "--eval-limit", "1000",
                           "--epochs", "1")) == 0
    data = json.loads((out / "summary.json").read_text())["data"]
    assert data["val_source"] == "holdout of train" and data["val_examples"] == len(held)
    assert data["train_examples"] == 24  # --train-limit counts what is left after the slice


def test_holdout_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="holdout"):
        TrainConfig(task="cb", out=tmp_path, holdout=1.0)


def test_holdout_keeps_a_multirc_question_on_one_side(tmp_path, data_dir):
    task = get_task("multirc")
    cfg = TrainConfig(task="multirc", out=tmp_path, holdout=0.1, data_dir=data_dir)
    examples = load_examples(task, "train", data_dir)
    held = {e.group for e in examples if is_held_out(cfg, task, e)}
    trained = {e.group for e in examples if not is_held_out(cfg, task, e)}
    assert held and trained and not held & trained


def test_the_default_precision_is_what_this_cpu_runs_natively_and_the_run_records_it(trained_run):
    """'auto' (the default) is bf16 autocast only where bf16 matmuls are native; an AVX2-only CPU emulates
    them ~100x slower than fp32. config.json records the precision the run really used."""
    from contract.model import native_bf16

    config = json.loads((trained_run / "config.json").read_text())
    assert config["precision"] == ("bf16" if native_bf16("cpu") else "fp32")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_device(monkeypatch, native, expected):
    import torch

    import training.evaluate as evaluate

    import contract.model

    monkeypatch.setattr(contract.model, "native_bf16", lambda device: native)
    cpu = torch.device("cpu")
    assert evaluate.resolve_precision("auto", cpu) == expected
    assert evaluate.resolve_precision("fp32", cpu) == "fp32" and evaluate.resolve_precision("bf16", cpu) == "bf16"
    assert isinstance(evaluate.autocast("auto", cpu), torch.autocast) == native


def test_evaluate_scores_in_another_precision_when_asked_and_says_which(trained_run):
    """The precision study separates training precision from scoring precision: `--precision bf16` scores a
    run trained in fp32 under bf16 autocast (probabilities move a little), and the metrics file says so."""
    assert main(["evaluate", str(trained_run), "--limit", "8", "--precision", "fp32"]) == 0
    fp32 = json.loads((trained_run / "eval" / "val.metrics.json").read_text())
    probs32 = [json.loads(r)["probs"] for r in (trained_run / "eval" / "val.predictions.jsonl").read_text().splitlines()]
    assert main(["evaluate", str(trained_run), "--limit", "8", "--precision", "bf16"]) == 0
    bf16 = json.loads((trained_run / "eval" / "val.metrics.json").read_text())
    probs16 = [json.loads(r)["probs"] for r in (trained_run / "eval" / "val.predictions.jsonl").read_text().splitlines()]
    assert fp32["trained_precision"] == bf16["trained_precision"] in ("fp32", "bf16")  # 'auto' as resolved
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16") and probs16 != probs32
    assert max(abs(a - b) for p, q in zip(probs16, probs32) for a, b in zip(p, q)) < 0.2


def test_evaluate_scores_the_held_out_slice_of_train_less_what_the_run_trained_on(trained_run, data_dir):
    """`--split holdout` on a run trained without --holdout (first 24 CB train rows): the 10 % hash slice of
    train, with the slice's rows among those 24 left out, since the run has seen them."""
    from contract.data import holdout_part
    from training.splits import DEFAULT_HOLDOUT, unseen_holdout
    from training.run_dir import load_config

    assert main(["evaluate", str(trained_run), "--split", "holdout"]) == 0
    result = json.loads((trained_run / "eval" / "holdout.metrics.json").read_text())
    keys = [json.loads(r)["key"] for r in (trained_run / "eval" / "holdout.predictions.jsonl").read_text().splitlines()]
    task = get_task("cb")
    train = load_examples(task, "train", data_dir)
    cfg = load_config(trained_run)
    in_slice = {e.key for e in train if holdout_part(task.format(e.fields), DEFAULT_HOLDOUT) == "val"}
    seen = {e.key for e in train[:24]}
    assert set(keys) == in_slice - seen and result["examples"] == len(keys) > 0
    assert in_slice & seen  # the slice did hold rows the run trained on: leaving them out mattered
    assert [e.key for e in unseen_holdout(cfg, task, data_dir)] == keys


def test_bf16_training_keeps_fp32_master_weights_and_optimizer_states(tmp_path, tiny_backbone, cb_rationales):
    """Issue 33's first suspect, ruled out and kept out: under `--precision bf16` autocast casts inside the
    matmuls only; the weights the optimizer updates, and its moments, stay float32."""
    out = tmp_path / "bf16"
    assert main(train_args(tiny_backbone, out, cb_rationales, "--precision", "bf16", "--max-steps", "2")) == 0
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    assert ckpt["trainable"] and all(t.dtype == torch.float32 for t in ckpt["trainable"].values())
    moments = [v for s in ckpt["optimizer"]["state"].values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert moments and all(m.dtype == torch.float32 for m in moments)
