"""Where the numbers came from: synthetic-data detection and the software that produced them."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from kneepain import __version__
from kneepain.contracts import WorkPaths

PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "torch",
    "pydicom",
    "SimpleITK",
    "jinja2",
)


def software_versions() -> dict[str, str]:
    """Python, kneepain and the libraries behind the numbers (read from package metadata, no imports)."""
    versions = {"python": platform.python_version(), "kneepain": __version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _marked_synthetic(obj: Any) -> bool:
    if isinstance(obj, dict):
        return obj.get("synthetic") is True or any(_marked_synthetic(v) for v in obj.values())
    return False


def truth_beside(path: Path) -> Path | None:
    """The synthetic generator's ``truth/`` folder beside the ``images/`` folder holding ``path``."""
    if (path / "images").is_dir() and (path / "truth").is_dir():  # the cohort root itself
        return path / "truth"
    for folder in (path, *path.parents):
        if folder.name == "images" and (folder.parent / "truth").is_dir():
            return folder.parent / "truth"
    return None


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def synthetic_evidence(run_info: dict[str, Any], work: Path) -> list[str]:
    """Reasons to believe the data are synthetic; empty when nothing says so.

    Looks at ``synthetic: true`` in run.json or in a JSON file of the work folder (top level or
    ingest/), and for a ``truth/`` folder beside the images recorded in run.json or in the series
    table (real OAI data never has one).
    """
    reasons = []
    if _marked_synthetic(run_info):
        reasons.append("run.json marks the data synthetic")
    paths = WorkPaths(work)
    for candidate in sorted([*work.glob("*.json"), *paths.ingest.glob("*.json")]):
        try:
            if _marked_synthetic(json.loads(candidate.read_text(encoding="utf-8"))):
                reasons.append(f"{candidate} marks the data synthetic")
        except (OSError, json.JSONDecodeError):
            continue
    images = [Path(s) for s in _strings(run_info) if ("/" in s or "\\" in s) and len(s) < 4096]
    if paths.series_table.exists():
        series = pd.read_csv(paths.series_table, usecols=lambda c: c == "path", dtype=str, nrows=5)
        images += [Path(p) for p in series.get("path", pd.Series(dtype=str)).dropna()]
    for image_path in images:
        truth = truth_beside(image_path)
        if truth is not None:
            reasons.append(f"a synthetic-generator truth folder exists: {truth}")
            break
    return reasons
