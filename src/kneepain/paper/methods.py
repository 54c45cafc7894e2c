"""The methods paragraph: what each run folder's run.json says was run, in sentences.

Nothing here is taken from the command line of `paper`: every number comes from run.json (through
:func:`kneepain.paper.runinfo.run_settings`) or from the evaluation's record of the software, so
the document states what was run, not what was asked for. Runs trained alike share one sentence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kneepain.paper.runinfo import RunSettings, read_settings

BRANCH_NAMES = {"kneenet": "KneeNet", "vgg16_gap": "VGG16-GAP", "alexnet_gap": "AlexNet-GAP"}
SOFTWARE_SHOWN = ("python", "kneepain", "torch", "numpy", "scikit-learn", "scipy", "SimpleITK", "pydicom")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def branch_name(settings: RunSettings) -> str:
    """KneeNet, VGG16-GAP, AlexNet-GAP (or the recorded name)."""
    return BRANCH_NAMES.get(settings.branch or "", settings.branch or "unrecorded branch")


def design_phrase(name: str, settings: RunSettings) -> str:
    """'paper-model-a (10-fold cross-validation of Model A, KneeNet, 233 participants predicted)'."""
    if settings.kind == "split":
        design = f"one model on the 70/15/15 split of Model {settings.model}, test part predicted"
    else:
        design = f"{settings.folds}-fold cross-validation of Model {settings.model}"
    predicted = f", {settings.subjects} participants predicted" if settings.subjects is not None else ""
    return f"{name} ({design}, {branch_name(settings)}{predicted})"


def training_phrase(settings: RunSettings, preset: str | None = None) -> str:
    """Network size and training recipe as recorded (everything but the branch and the design)."""
    if settings.preset:
        named = f"preset {settings.preset}"
    elif preset:
        named = f"preset {preset} (as requested; run.json records its values, not its name)"
    else:
        named = "preset not recorded"
    version = f"kneepain {settings.package_version}" if settings.package_version else "version not recorded"
    return (
        f"width {_number(settings.width)}, {settings.input_size} x {settings.input_size} input, "
        f"{settings.mode} mode; {settings.optimizer}, learning rate {_number(settings.lr)}, "
        f"batch {settings.batch_size}, {settings.epochs} epochs, precision {settings.precision}, "
        f"device {settings.device}, seed {settings.seed}; {named}; {version}"
    )


def software_line(run_dirs: list[Path]) -> str:
    """The software versions the evaluation recorded (the first evaluated run's metrics.json)."""
    for run_dir in run_dirs:
        path = run_dir / "evaluation" / "metrics.json"
        try:
            software: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")).get("software", {})
        except (OSError, ValueError):
            continue
        shown = [f"{name} {software[name]}" for name in SOFTWARE_SHOWN if name in software]
        if shown:
            return "Software (recorded by the evaluation): " + ", ".join(shown) + "."
    return "Software versions: no evaluation recorded them."


def methods_sentences(runs: dict[str, Path], preset: str | None = None) -> list[str]:
    """The runs and their designs, one sentence per group of runs trained alike, then the software.

    ``runs`` maps a run's name to its folder (in the order to name them); folders without a
    run.json are left out. ``preset`` names the preset asked for, stated only when run.json does
    not record the name.
    """
    recorded = {name: read_settings(path) for name, path in runs.items()}
    settings = {name: s for name, s in recorded.items() if s is not None}
    if not settings:
        return ["No run has been trained yet."]
    sentences = ["Runs: " + "; ".join(design_phrase(name, s) for name, s in settings.items()) + "."]
    groups: dict[str, list[str]] = {}
    for name, s in settings.items():
        groups.setdefault(training_phrase(s, preset), []).append(name)
    for phrase, names in groups.items():
        subject = "Every run" if len(groups) == 1 else ", ".join(names)
        sentences.append(f"{subject}: {phrase}.")
    sentences.append(software_line(list(runs.values())))
    return sentences
