"""`TrainConfig` from `dhrd train` flags: `--config` files, explicit flags over them, defaults in --help."""
from __future__ import annotations

import json

import pytest

from training.cli import build_parser
from training.config import TrainConfig


def config_from(argv: list[str]) -> TrainConfig:
    return TrainConfig.from_args(build_parser().parse_args(["train", "--task", "cb", "--out", "run", *argv]))


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"alpha": 0.3, "lora": True, "epochs": 5, "lr": 1e-4}))
    return path


def test_a_flag_passed_at_its_default_value_overrides_the_config_file(config_file):
    cfg = config_from(["--config", str(config_file), "--alpha", "1", "--no-lora", "--lr", "3e-5"])
    assert (cfg.alpha, cfg.lora, cfg.lr) == (1.0, False, 3e-5)
    assert cfg.epochs == 5  # not passed: the file's value


def test_the_config_file_overrides_the_field_defaults(config_file):
    cfg = config_from(["--config", str(config_file)])
    assert (cfg.alpha, cfg.lora, cfg.epochs, cfg.lr) == (0.3, True, 5, 1e-4)
    assert cfg.beta == 1.0 and cfg.head_lr == 1e-3  # neither flag nor file: the dataclass (LoRA head LR)


def test_without_a_config_file_flags_and_defaults_make_the_config():
    cfg = config_from(["--alpha", "0", "--full"])
    assert cfg == TrainConfig(task="cb", out="run", alpha=0.0, lora=False)


def test_full_wins_over_a_config_file_asking_for_lora(config_file):
    assert config_from(["--config", str(config_file), "--full"]).lora is False


def test_unknown_keys_in_the_config_file_are_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"alpah": 0.5}))
    with pytest.raises(ValueError, match="unknown config key"):
        config_from(["--config", str(path)])


def test_help_shows_each_flags_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 1.0)", "(default: mlp2-gelu)", "(default: 20)", "(default: True)", "(default: none)"):
        assert shown in help_text


def test_pooling_and_head_are_checked_against_the_contract():
    with pytest.raises(ValueError, match="pooling must be one of"):
        TrainConfig(task="cb", out="run", pooling="max")
    with pytest.raises(ValueError, match="head must be one of"):
        TrainConfig(task="cb", out="run", head="mlp3")


def test_the_lm_span_defaults_to_the_papers_whole_sequence():
    """The confirmation did not confirm the rationale-and-answer span's lead, so by its pre-registered rule
    the default is the paper's Eq. 3 (TRAINING.md, "Confirmation result"); 'suffix' stays a flag."""
    assert config_from([]).lm_span == "all"
    assert config_from(["--lm-span", "suffix"]).lm_span == "suffix"


def test_precision_defaults_to_auto_and_refuses_other_names():
    assert config_from([]).precision == "auto"
    with pytest.raises(ValueError, match="precision must be 'auto', 'bf16' or 'fp32'"):
        TrainConfig(task="cb", out="run", precision="half")
