"""The training CLI of `cv` and `train`: a preset, `--set section.key=value`, a few shortcuts; every
setting reaches run.json and each bundle's model.json under ``config``."""

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

# Each differs from the tiny preset's value, so a setting that is dropped fails the test.
SETTINGS = {
    "model.input_size": ("16", 16),
    "model.combine": ("diff", "diff"),
    "model.members": ("2", 2),
    "data.val_fraction": ("0.2", 0.2),
    "data.swap_knees": ("false", False),
    "optim.optimizer": ("sgd", "sgd"),
    "optim.lr": ("0.003", 0.003),
    "optim.batch_size": ("8", 8),
    "optim.weight_decay": ("0.001", 0.001),
    "optim.patience": ("0", 0),
    "optim.select_on": ("last", "last"),
    "optim.ema_decay": ("0.9", 0.9),
    "runtime.channels_last": ("true", True),
}
SHORTCUTS = {"--epochs": "1", "--seed": "5", "--precision": "fp32", "--device": "cpu"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_work(tmp_path_factory.mktemp("work"), n=40, size=16)


def flags_of(command: str) -> list[str]:
    """The option flags `kneepain COMMAND --help` lists, in order."""
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return re.findall(r"│ (--[a-z][a-z-]*)", result.output)


def test_cv_has_at_most_twelve_options_and_train_the_same_but_folds() -> None:
    cv_flags, train_flags = flags_of("cv"), flags_of("train")
    assert len(cv_flags) <= 12, cv_flags
    assert "--set" in cv_flags and "--preset" in cv_flags
    assert [f for f in cv_flags if f not in ("--folds", "--overwrite")] == train_flags


@pytest.mark.parametrize("command", [["cv", "--folds", "2"], ["train"]], ids=["cv", "train"])
def test_every_setting_reaches_the_run_and_the_bundle(work: Path, command: list[str]) -> None:
    name = f"options-{command[0]}"
    args = [*command, str(work), "--run", name, "--model", "A", "--preset", "tiny"]
    for key, (text, _) in SETTINGS.items():
        args += ["--set", f"{key}={text}"]
    for flag, value in SHORTCUTS.items():
        args += [flag, value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run = work / "runs" / name
    record = json.loads((run / "run.json").read_text())
    bundle = json.loads((run / "fold_00" / "bundle" / "model.json").read_text())
    assert bundle["config"] == record["config"]
    config = record["config"]
    for key, (_, value) in SETTINGS.items():
        section, field = key.split(".")
        assert config[section][field] == value, key
    assert (config["optim"]["epochs"], config["runtime"]["seed"], record["seed"]) == (1, 5, 5)
    assert (config["runtime"]["precision"], config["runtime"]["device"]) == ("fp32", "cpu")
    assert record["precision"] == {"precision": "fp32", "requested": "fp32", "reason": "asked for"}
    assert record["architecture"]["members"] == 2 and record["training"]["lr"] == 0.003


def test_auto_precision_is_resolved_and_recorded_with_its_reason(work: Path) -> None:
    args = ["cv", str(work), "--run", "auto", "--folds", "2", "--preset", "tiny", "--epochs", "1"]
    args += ["--precision", "auto"]  # the tiny preset itself trains in fp32 (docs/experiments.md)
    result = CliRunner().invoke(app, [*args, "--set", "model.input_size=16", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads((work / "runs" / "auto" / "run.json").read_text())
    choice = record["precision"]
    assert record["config"]["runtime"]["precision"] == "auto" and choice["requested"] == "auto"
    assert choice["precision"] in ("fp32", "bf16") and choice["reason"].startswith("auto: CPU has")
    assert record["training"]["precision"] == choice["precision"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            ["--set", "model.colour=red"],
            "--set model.colour=red: unknown key model.colour; valid keys: model.branch,",
        ),
        (["--set", "optim.lr=fast"], "--set optim.lr=fast: optim.lr must be a number, got 'fast'"),
        (["--set", "lr=0.1"], "--set lr=0.1: expected section.key=value"),
        (["--set", "optim.optimizer=rmsprop"], "optimizer must be 'sgd' or 'adam', got 'rmsprop'"),
        (["--preset", "huge"], "--preset huge: unknown preset; expected paper, small, tiny or a .toml file"),
        (["--precision", "fp8"], "precision must be one of ('auto', 'fp32', 'bf16', 'fp16'), got 'fp8'"),
    ],
)
@pytest.mark.parametrize("command", ["cv", "train"])
def test_a_bad_setting_is_one_clear_line_and_exit_2(
    work: Path, command: str, given: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, [command, str(work), "--run", f"bad-{command}", *given])
    assert result.exit_code == 2, result.output
    assert f"{command}: {message}" in " ".join(result.output.split())
    assert not (work / "runs" / f"bad-{command}").exists()
