"""The committed shell completion scripts are the ones the app generates today."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_up_to_date(shell):
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "True"}
    generated = subprocess.run(
        ["wfctl", "--show-completion", shell], env=env, capture_output=True, text=True, check=True
    ).stdout
    committed = (REPO / "completions" / f"wfctl.{shell}").read_text()
    assert generated == committed, (
        f"completions/wfctl.{shell} is out of date: regenerate it with "
        f"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION=True wfctl --show-completion {shell} > completions/wfctl.{shell}"
    )


def test_bash_completion_lists_commands():
    env = {**os.environ, "_WFCTL_COMPLETE": "complete_bash", "COMP_WORDS": "wfctl exe", "COMP_CWORD": "1"}
    result = subprocess.run(["wfctl"], env=env, capture_output=True, text=True)
    assert "execute" in result.stdout.split()
    assert "execution" in result.stdout.split()


def test_cached_help_is_what_typer_prints(wfctl):
    """`wfctl --help` prints src/wfctl/cli/help.txt without importing Typer; it must be
    exactly the page Typer renders (regenerate: see the assertion message)."""
    rendered = subprocess.run(
        [sys.executable, "-c", "from wfctl.cli.app import app; app(['--help'], prog_name='wfctl')"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"},
    ).stdout
    cached = (REPO / "src" / "wfctl" / "cli" / "help.txt").read_text()
    assert cached == rendered, (
        "src/wfctl/cli/help.txt is out of date: regenerate it with "
        "python -c \"from wfctl.cli.app import app; app(['--help'], prog_name='wfctl')\" > src/wfctl/cli/help.txt"
    )
    assert wfctl("--help").stdout == cached
    assert "execute" in cached and "Usage: wfctl" in cached
