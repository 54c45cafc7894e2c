"""Read what a run folder's run.json says was run, in one place (its format is being redesigned).

Today's run.json keeps the architecture under ``architecture`` and the training settings under
``training``; after issue 20 the resolved configuration lives under ``config`` in sections
(model, data, optim, runtime). :func:`run_settings` reads either, so nothing else in the package
knows the layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kneepain.contracts import PREDICTIONS_TABLE, read_run_info

COMPLETE = "complete"


@dataclass(frozen=True)
class RunSettings:
    """The settings of one run that the document states (None: run.json does not record it)."""

    kind: str | None
    model: str | None
    folds: int | None
    seed: int | None
    preset: str | None
    branch: str | None
    width: float | None
    input_size: int | None
    mode: str | None
    optimizer: str | None
    lr: float | None
    batch_size: int | None
    epochs: int | None
    precision: str | None
    device: str | None
    subjects: int | None
    seconds: float | None
    status: str | None
    package_version: str | None


def _sections(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Where settings may be, most specific first: the new ``config`` sections, then the old blocks."""
    found: list[dict[str, Any]] = []
    config = info.get("config")
    if isinstance(config, dict):
        found += [
            config[name]
            for name in ("model", "optim", "runtime", "data")
            if isinstance(config.get(name), dict)
        ]
        found.append(config)
    found += [info[name] for name in ("architecture", "training") if isinstance(info.get(name), dict)]
    found.append(info)
    return found


def _lookup(info: dict[str, Any], *keys: str) -> Any:
    """The first value recorded under any of ``keys`` in any section (None when none has it)."""
    for section in _sections(info):
        for key in keys:
            value = section.get(key)
            if value is not None and not isinstance(value, dict):
                return value
    return None


def run_settings(info: dict[str, Any]) -> RunSettings:
    """The settings of a run from its run.json content (old or issue-20 layout)."""

    def number(value: Any, kind: type) -> Any:
        try:
            return None if value is None else kind(value)
        except (TypeError, ValueError):
            return None

    resolved = info.get("precision")  # issue 21: {"precision": used, "requested": ..., "reason": ...}
    if isinstance(resolved, dict):
        precision = resolved.get("precision")
        if resolved.get("requested") not in (None, precision):
            precision = f"{precision} ({resolved['requested']} requested)"
    else:
        precision = _lookup(info, "precision_used", "resolved_precision", "precision")
    return RunSettings(
        kind=_lookup(info, "kind"),
        model=_lookup(info, "model") if isinstance(_lookup(info, "model"), str) else None,
        folds=number(_lookup(info, "folds"), int),
        seed=number(_lookup(info, "seed"), int),
        preset=_lookup(info, "preset", "preset_name"),
        branch=_lookup(info, "branch"),
        width=number(_lookup(info, "width"), float),
        input_size=number(_lookup(info, "input_size"), int),
        mode=_lookup(info, "mode"),
        optimizer=_lookup(info, "optimizer"),
        lr=number(_lookup(info, "lr"), float),
        batch_size=number(_lookup(info, "batch_size"), int),
        epochs=number(_lookup(info, "epochs"), int),
        precision=precision if isinstance(precision, str) else None,
        device=_lookup(info, "device_used", "device"),
        subjects=number(_lookup(info, "subjects"), int),
        seconds=number(_lookup(info, "seconds"), float),
        status=_lookup(info, "status"),
        package_version=_lookup(info, "package_version"),
    )


def read_settings(run_dir: Path) -> RunSettings | None:
    """The settings of the run folder ``run_dir``; None when it has no run.json."""
    info = read_run_info(run_dir)
    return run_settings(info) if info else None


def run_finished(run_dir: Path) -> bool:
    """True when the run's training is complete: run.json says so and its predictions table exists."""
    path = run_dir / "run.json"
    if not path.exists() or not (run_dir / PREDICTIONS_TABLE).exists():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("status") == COMPLETE
    except (OSError, ValueError, AttributeError):
        return False
