"""The `synthembed` command: every subcommand has --help, bad input exits non-zero with a message, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from synthembed.cli import COMMANDS, main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthembed.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert f"synthembed {command}" in out and "--" in out


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_profile_is_a_clear_error_not_a_traceback():
    result = _run("study", "--profile", "no-such-profile")
    assert result.returncode == 2
    assert "unknown profile 'no-such-profile'" in result.stderr
    assert "Traceback" not in result.stderr
