"""The training options `cv` and `train` share: the same flags, and every flag reaches the run's record."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from kneepain.cli import app
from workfolder import make_work

GIVEN = {
    "--preset": "tiny",
    "--branch": "kneenet",
    "--width": "0.0625",
    "--input-size": "16",
    "--combine": "diff",
    "--mode": "joint",
    "--head": "shared",
    "--members": "2",
    "--epochs": "1",
    "--lr": "0.003",
    "--batch-size": "8",
    "--optimizer": "sgd",
    "--weight-decay": "0.001",
    "--patience": "0",
    "--select-on": "last",
    "--ema-decay": "0.9",
    "--val-fraction": "0.2",
    "--precision": "fp32",
    "--device": "cpu",
    "--seed": "5",
}
SWITCHES = ["--no-swap-knees", "--channels-last", "--no-compile"]  # each differs from the tiny preset's
BOOLEAN_FLAGS = [
    "--swap-knees",
    "--no-swap-knees",
    "--channels-last",
    "--no-channels-last",
    "--compile",
    "--no-compile",
]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_work(tmp_path_factory.mktemp("work"), n=40, size=16)


def flags_of(command: str) -> list[str]:
    """The option flags `kneepain COMMAND --help` lists, in order."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return re.findall(r"(--[a-z][a-z-]*)", result.output)


def test_cv_and_train_offer_the_same_training_flags() -> None:
    cv_flags, train_flags = flags_of("cv"), flags_of("train")
    for flag in [*GIVEN, *BOOLEAN_FLAGS]:
        assert flag in cv_flags and flag in train_flags, flag
    assert [f for f in cv_flags if f not in ("--folds", "--overwrite")] == train_flags


@pytest.mark.parametrize("command", [["cv", "--folds", "2"], ["train"]], ids=["cv", "train"])
def test_every_training_flag_reaches_the_run_record(work: Path, command: list[str]) -> None:
    name = f"options-{command[0]}"
    args = [*command, str(work), "--run", name, "--model", "A", *SWITCHES]
    for flag, value in GIVEN.items():
        args += [flag, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((work / "runs" / name / "run.json").read_text())
    assert record["seed"] == 5
    architecture = ("branch", "width", "input_size", "combine", "mode", "head", "members")
    assert {k: record["architecture"][k] for k in architecture} == {
        "branch": "kneenet",
        "width": 0.0625,
        "input_size": 16,
        "combine": "diff",
        "mode": "joint",
        "head": "shared",
        "members": 2,
    }
    training = record["training"]
    assert (training["epochs"], training["lr"], training["batch_size"]) == (1, 0.003, 8)
    assert (training["optimizer"], training["weight_decay"], training["patience"]) == ("sgd", 0.001, 0)
    assert (training["precision"], training["device"], training["seed"]) == ("fp32", "cpu", 5)
    assert (training["select_on"], training["ema_decay"], training["val_fraction"]) == ("last", 0.9, 0.2)
    assert (training["swap_knees"], training["channels_last"], training["compile"]) == (False, True, False)


@pytest.mark.parametrize("command", ["cv", "train"])
def test_a_bad_option_value_is_a_clear_error(work: Path, command: str) -> None:
    result = CliRunner().invoke(app, [command, str(work), "--preset", "tiny", "--optimizer", "rmsprop"])
    assert result.exit_code == 2
    assert f"{command}: optimizer must be 'sgd' or 'adam', got 'rmsprop'" in " ".join(result.output.split())
