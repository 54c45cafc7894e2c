"""The CLI entry point: help and version work, and every stage module registers cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from kneepain import __version__
from kneepain.cli import app


def test_version_flag_prints_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kneepain {__version__}"


def test_help_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kneepain", "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Stages pass files" in result.stdout


def test_a_missing_command_module_is_an_import_error_not_a_missing_command() -> None:
    from kneepain.cli import register_commands

    with pytest.raises(ModuleNotFoundError, match=r"kneepain\.commands\.no_such_stage"):
        register_commands(typer.Typer(), ("synth", "no_such_stage"))
