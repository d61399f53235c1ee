"""The training commands' help: every option says what it does and shows its default; `dhrd train`'s
closing paragraph."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from training.cli import build_parser, dhrd_command, train_report
from training.config import TrainConfig

COMMANDS = ("base-model", "rationales", "train", "evaluate", "export")


def help_of(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_help_string(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    missing = [a.option_strings or [a.dest] for a in sub._actions if not a.help]
    assert not missing, f"dhrd {command}: options without help: {missing}"


@pytest.mark.parametrize("command, shown", [
    ("export", ["(default: best)", "(default: bfloat16)", "(default: 16)"]),
    ("evaluate", ["(default: val)", "(default: best)", "(default: 16)", "(default: all)"]),
    ("rationales", ["(default: train)", "(default: embedded)", "(default: 4)", "(default: 60.0)", "(default: 0.0)"]),
    ("train", ["(default: 1.0)", "(default: 3)", "(default: 512)"]),
])
def test_help_shows_defaults(command, shown, capsys):
    text = help_of(command, capsys)
    for s in shown:
        assert s in text, f"{s!r} not in `dhrd {command} --help`"
    assert "(default: None)" not in text


def test_required_options_do_not_claim_a_default(capsys):
    text = help_of("export", capsys)
    assert "--out OUT export directory to write --checkpoint" in text


def test_help_defaults_do_not_break_explicit_flag_detection():
    # --epochs is shown with its default in --help, yet only flags actually passed reach the namespace
    args = build_parser().parse_args(["train", "--task", "cb", "--out", "r", "--epochs", "3"])
    assert hasattr(args, "epochs") and not hasattr(args, "alpha")


def test_train_report_states_the_result_and_the_next_command():
    cfg = TrainConfig(task="cb", out="runs/cb-dhrd")
    summary = {"steps": 48, "tokens": 155103, "wall_seconds_this_process": 494.8,
               "best": {"epoch": 2, "step": 48, "val": {"accuracy": 0.6964, "f1_macro": 0.4863, "score": 0.59}}}
    text = train_report(cfg, summary)
    assert "Trained cb as DHRD (alpha 1, beta 1) with full fine-tuning: 48 optimizer steps, 155,103 tokens, 495 s" \
        in text
    assert "best validation at epoch 2, step 48: accuracy 0.6964, f1_macro 0.4863" in text
    assert text.rstrip().endswith(f"{dhrd_command()} export runs/cb-dhrd --out exports/cb-dhrd")
    pooled = train_report(TrainConfig(task="rte", out="r", alpha=0, lora=True), {**summary, "best": None})
    assert "pooled baseline (alpha 0) with LoRA" in pooled and "no validation was run" in pooled


def test_the_next_command_names_the_script_beside_the_interpreter(monkeypatch, tmp_path):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "dhrd").write_text("")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert dhrd_command() == str(Path(".venv/bin/dhrd"))
    (bin_dir / "dhrd").unlink()
    assert dhrd_command().endswith("python -m dhrd")
