"""The `dhrd` command: one dispatcher, each side's flags behind it, a usage error for anything else."""
from __future__ import annotations

import pytest

from dhrd.cli import COMMANDS, main


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: dhrd " + command in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys):
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
