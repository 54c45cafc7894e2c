"""One typed configuration of a training run: model, data, optimisation, runtime.

A run is described by a :class:`RunConfig` read from a preset file (``configs/paper.toml``,
``small.toml``, ``tiny.toml``, or any TOML file a user copied and edited) and changed by
``section.key=value`` overrides (the CLI's ``--set``). The resolved configuration is written into
the run (run.json ``config``) and every bundle (model.json ``config``), so a run can be repeated
from its record alone.

The training loop reads the three non-model sections as one flat :class:`TrainConfig` (its fields
are the sections' fields, declared once, here): ``config.training()``.

Example::

    config = load_config("small").with_overrides(["model.width=0.25", "optim.epochs=30"])
    run_cv(work, "wider", folds=5, config=config)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Self

from kneepain.contracts import JsonRecord
from kneepain.hardware import REQUESTS
from kneepain.model.siamese import ModelConfig

PRESET_NAMES = ("paper", "small", "tiny")
SELECT_ON = ("loss", "last")  # best validation AUC was measured unreliable and removed (2026-12-03)
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
KINDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}


class ConfigError(ValueError):
    """A preset that cannot be found or read, or an override naming an unknown key or a bad value."""


@dataclass(frozen=True)
class DataConfig(JsonRecord):
    """Which subjects train and how their batches are augmented."""

    val_fraction: float = 0.1  # share of each training part held out for validation (0 = none)
    swap_knees: bool = False  # augmentation: swap the knees and flip the label (p = 0.5)

    def __post_init__(self) -> None:
        self._check_data()

    def _check_data(self) -> None:
        if not 0.0 <= self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction must be in [0, 0.5), got {self.val_fraction}")


@dataclass(frozen=True)
class OptimConfig(JsonRecord):
    """The optimiser, its schedule and which epoch's weights are kept. Defaults: the paper's recipe."""

    optimizer: str = "sgd"  # sgd (paper) | adam
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step_epochs: int = 20  # learning rate x lr_gamma every this many epochs
    lr_gamma: float = 0.1
    batch_size: int = 64  # subjects (pairs of 23-slice stacks) per step, over all processes
    epochs: int = 500
    patience: int = 50  # early stopping on the validation score (0 = off)
    select_on: str = "loss"  # kept epoch: lowest validation loss (paper) or the last
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    fusion_steps: int = 200  # paper mode: LBFGS iterations of the logistic fusion layer
    fusion_l2: float = 1e-4

    def __post_init__(self) -> None:
        self._check_optim()

    def _check_optim(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.select_on not in SELECT_ON:
            raise ConfigError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(f"batch_size and epochs must be >= 1, got {self.batch_size}, {self.epochs}")


@dataclass(frozen=True)
class RuntimeConfig(JsonRecord):
    """Where and how fast: device, precision, memory format, compilation, seed."""

    precision: str = "auto"  # auto (bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0

    def __post_init__(self) -> None:
        self._check_runtime()

    def _check_runtime(self) -> None:
        if self.precision not in REQUESTS:
            raise ConfigError(f"precision must be one of {REQUESTS}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")


@dataclass(frozen=True)
class TrainConfig(OptimConfig, DataConfig, RuntimeConfig):
    """The data, optim and runtime sections as one flat record: what the training loop reads."""

    def __post_init__(self) -> None:
        self._check_data()
        self._check_optim()
        self._check_runtime()


SECTIONS: dict[str, type[JsonRecord]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run is made from (besides the work folder, cohort and folds)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_json(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}}: what run.json and model.json record under ``config``."""
        return {name: getattr(self, name).to_json() for name in SECTIONS}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "configuration") -> Self:
        """The configuration of a {section: {key: value}} mapping; unknown sections or keys are errors."""
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{where}: unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}")
        built = {}
        for name, section in SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: [{name}] must be a table of key = value")
            built[name] = section(**{key: _typed(name, key, value, where) for key, value in values.items()})
        return cls(**built)

    @classmethod
    def from_parts(cls, model: ModelConfig, training: TrainConfig) -> Self:
        """The configuration of a (ModelConfig, TrainConfig) pair (the loop's flat record split again)."""
        flat = training.to_json()
        sections = {
            name: section.from_json(flat) for name, section in SECTIONS.items() if section is not ModelConfig
        }
        return cls(model=model, **sections)

    def training(self, **changes: Any) -> TrainConfig:
        """The data, optim and runtime sections as the loop's flat record, with ``changes`` applied."""
        flat = {**self.data.to_json(), **self.optim.to_json(), **self.runtime.to_json(), **changes}
        return TrainConfig(**flat)

    def with_overrides(self, assignments: list[str] | tuple[str, ...]) -> Self:
        """A copy with each ``section.key=value`` applied in order (values parsed by the field's type)."""
        sections = {name: getattr(self, name) for name in SECTIONS}
        for assignment in assignments:
            name, key, value = parse_assignment(assignment)
            sections[name] = replace(sections[name], **{key: value})
        return type(self)(**sections)


def valid_keys() -> list[str]:
    """Every ``section.key`` a configuration has."""
    return [f"{name}.{f.name}" for name, section in SECTIONS.items() for f in fields(section)]


def _field_type(section: str, key: str) -> str:
    for item in fields(SECTIONS[section]):
        if item.name == key:
            return str(item.type)
    raise ConfigError(f"unknown key {section}.{key}; valid keys: {', '.join(valid_keys())}")


def _typed(section: str, key: str, value: Any, where: str) -> Any:
    """``value`` (from TOML) checked against the field's type; an int is accepted for a float."""
    try:
        kind = _field_type(section, key)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    expected = {"bool": bool, "int": int, "float": (int, float), "str": str}[kind]
    if (isinstance(value, bool) and kind != "bool") or not isinstance(value, expected):
        raise ConfigError(f"{where}: {section}.{key} must be {KINDS[kind]}, got {value!r}")
    return float(value) if kind == "float" else value


def parse_assignment(assignment: str) -> tuple[str, str, Any]:
    """``"optim.lr=3e-3"`` -> ("optim", "lr", 0.003): section, key, and value parsed by the field's type."""
    name, sep, text = assignment.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot:
        raise ConfigError(f"--set {assignment}: expected section.key=value, e.g. optim.lr=0.003")
    try:
        if section not in SECTIONS:
            raise ConfigError(f"unknown key {name.strip()}; valid keys: {', '.join(valid_keys())}")
        kind = _field_type(section, key)
    except ConfigError as error:
        raise ConfigError(f"--set {assignment}: {error}") from None
    text = text.strip()
    try:
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return section, key, text.lower() in ("true", "1", "yes")
        return section, key, {"int": int, "float": float, "str": str}[kind](text)
    except ValueError:
        raise ConfigError(
            f"--set {assignment}: {section}.{key} must be {KINDS[kind]}, got {text!r}"
        ) from None


def preset_path(name: str) -> Path:
    """The TOML file of a preset name (packaged with kneepain), or ``name`` itself when it is a file."""
    if name in PRESET_NAMES:
        return Path(str(resources.files("kneepain.configs") / f"{name}.toml"))
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"--preset {name}: file not found")
        return path
    raise ConfigError(f"--preset {name}: unknown preset; expected {', '.join(PRESET_NAMES)} or a .toml file")


def load_config(name: str | Path) -> RunConfig:
    """The configuration of a preset name or TOML file (a missing key takes the paper's default)."""
    path = preset_path(str(name))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error
    return RunConfig.from_json(data, where=str(path))


def cli_config(
    preset: str,
    assignments: list[str] | None = None,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    precision: str | None = None,
    device: str | None = None,
) -> RunConfig:
    """The CLI's configuration: the preset, then ``--set`` assignments, then the named shortcuts."""
    shortcuts = {"optim.epochs": epochs, "runtime.seed": seed, "runtime.precision": precision}
    shortcuts["runtime.device"] = device
    given = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    return load_config(preset).with_overrides([*(assignments or []), *given])


def preset(
    name: str, model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    """(ModelConfig, TrainConfig) of preset ``name`` with the given fields replaced (library callers)."""
    config = load_config(name)
    model = replace(config.model, **(model_overrides or {}))
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train_overrides or {}) - known)
    if unknown:
        raise ConfigError(f"unknown training field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
    return model, config.training(**(train_overrides or {}))
