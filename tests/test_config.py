"""RunConfig: presets as TOML files (packaged), overrides by type, the loop's flat record."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from kneepain.config import (
    PRESET_NAMES,
    ConfigError,
    DataConfig,
    OptimConfig,
    RunConfig,
    RuntimeConfig,
    TrainConfig,
    load_config,
    preset,
    preset_path,
)
from kneepain.model.siamese import ModelConfig

ROOT = Path(__file__).parents[1]

# The presets as train/loop.py's PRESETS held them before they became files (2026-12-03): the files
# must give exactly these values (any other field at its paper default), or results do not reproduce.
OLD_PRESETS = {
    "paper": (
        {"branch": "kneenet", "width": 1.0, "input_size": 224, "combine": "relu_diff", "mode": "paper"},
        {},
    ),
    "small": (
        {"branch": "kneenet", "width": 0.125, "input_size": 64, "combine": "relu_diff", "mode": "joint",
         "head": "shared", "readout": "swap_mean"},
        {"optimizer": "adam", "lr": 3e-3, "lr_step_epochs": 10, "batch_size": 16, "epochs": 20, "patience": 0,
         "select_on": "last", "ema_decay": 0.95, "val_fraction": 0.0, "swap_knees": True,
         "weight_decay": 1e-4, "channels_last": True, "precision": "fp32"},
    ),
    "tiny": (
        {"branch": "kneenet", "width": 0.0625, "input_size": 32, "combine": "relu_diff", "mode": "joint",
         "head": "shared", "readout": "swap_mean"},
        {"optimizer": "adam", "lr": 1e-2, "lr_step_epochs": 10, "batch_size": 16, "epochs": 8, "patience": 4,
         "swap_knees": True, "precision": "fp32"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_files_hold_exactly_the_former_presets(name: str) -> None:
    architecture, training = OLD_PRESETS[name]
    model, train = preset(name)
    assert model == ModelConfig(**architecture)
    assert train == TrainConfig(**training)  # paper: precision "auto"; small and tiny: fp32


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_files_are_package_data_and_in_configs(name: str) -> None:
    packaged = preset_path(name)
    assert packaged.parent.name == "configs" and "kneepain" in packaged.parts
    assert (ROOT / "configs" / f"{name}.toml").read_bytes() == packaged.read_bytes()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "configs/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["kneepain"]
    # every key is written out, so a user who copies the file sees every setting
    written = tomllib.loads(packaged.read_text())
    assert {s: sorted(v) for s, v in written.items()} == {
        s: sorted(v) for s, v in load_config(name).to_json().items()
    }


def test_the_sections_partition_the_loops_record() -> None:
    names = [f.name for section in (DataConfig, OptimConfig, RuntimeConfig) for f in fields(section)]
    assert sorted(names) == sorted(f.name for f in fields(TrainConfig)) and len(set(names)) == len(names)
    config = load_config("small")
    assert RunConfig.from_parts(config.model, config.training()) == config


def test_overrides_are_parsed_by_the_fields_type() -> None:
    config = load_config("tiny").with_overrides(
        ["model.branch=vgg16_gap", "model.width=0.25", "optim.epochs=3", "data.swap_knees=false"]
    )
    assert (config.model.branch, config.model.width, config.optim.epochs) == ("vgg16_gap", 0.25, 3)
    assert config.data.swap_knees is False and config.optim.lr == 1e-2
    with pytest.raises(ConfigError, match=r"optim\.epochs must be an integer, got '3\.5'"):
        config.with_overrides(["optim.epochs=3.5"])


def test_a_copied_preset_file_may_leave_keys_out_but_not_misspell_them(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text("[model]\nwidth = 1\n[optim]\nlr = 0.001\n")
    config = load_config(mine)
    assert (config.model.width, config.optim.lr, config.optim.epochs) == (1.0, 0.001, 500)
    mine.write_text("[optim]\nlearning_rate = 0.001\n")
    with pytest.raises(ConfigError, match=r"mine.toml.*unknown key optim.learning_rate; valid keys: model"):
        load_config(mine)
    mine.write_text('[optim]\nepochs = "ten"\n')
    with pytest.raises(ConfigError, match=r"mine.toml: optim.epochs must be an integer, got 'ten'"):
        load_config(mine)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")
