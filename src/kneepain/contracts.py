"""The files between stages: names, columns and shapes. See docs/contracts.md.

Stages never import each other's internals; they agree on these names. Change a contract here
and in docs/contracts.md together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# --- slice cache geometry (the paper's) ------------------------------------------------------
N_SLICES = 23  # centre slice and 11 on each side
HALF_SLICES = 11
IMAGE_SIZE = 224
KNEES = ("left", "right")  # knee axis of the cache: index 0 = left, 1 = right
CACHE_DTYPE = np.uint8  # stored value v means intensity v / 255 in [0, 1]

# --- labels ------------------------------------------------------------------------------------
LABEL_RIGHT_PAINFUL = 1
LABEL_LEFT_PAINFUL = 0

# --- stage folders inside a work folder ------------------------------------------------------
INGEST_DIR = "ingest"
PREPROCESS_DIR = "preprocess"
RUNS_DIR = "runs"

SERIES_TABLE = "series.csv"
COHORT_TABLE = "cohort.csv"
FUNNEL_TABLE = "funnel.csv"
CACHE_ARRAY = "cache.npy"
CACHE_INDEX = "index.csv"
CACHE_CONFIG = "config.json"
QC_REPORT = "qc.csv"
REGISTRATION_TABLE = "registration.csv"
PREDICTIONS_TABLE = "predictions.csv"
FOLDS_FILE = "folds.json"
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_META = "model.json"

SERIES_COLUMNS = [
    "subject_id",
    "side",
    "visit",
    "path",
    "n_slices",
    "rows",
    "columns",
    "pixel_spacing_row_mm",
    "pixel_spacing_col_mm",
    "slice_thickness_mm",
    "orientation",
    "problem",
]

COHORT_COLUMNS = [
    "subject_id",
    "label",
    "pain_right",
    "pain_left",
    "womac_right",
    "womac_left",
    "kl_right",
    "kl_left",
    "age",
    "sex",
    "bmi",
    "has_left_series",
    "has_right_series",
    "model_a",
    "model_b",
    "exclusion",
]

CACHE_INDEX_COLUMNS = ["row", "subject_id", "centre_left", "centre_right", "qc_pass", "qc_reason"]

PREDICTION_COLUMNS = ["subject_id", "fold", "split", "prob_right", "label"]


@dataclass(frozen=True)
class WorkPaths:
    """Where each stage reads and writes inside one work folder."""

    root: Path

    @property
    def ingest(self) -> Path:
        return self.root / INGEST_DIR

    @property
    def preprocess(self) -> Path:
        return self.root / PREPROCESS_DIR

    @property
    def runs(self) -> Path:
        return self.root / RUNS_DIR

    @property
    def series_table(self) -> Path:
        return self.ingest / SERIES_TABLE

    @property
    def cohort_table(self) -> Path:
        return self.ingest / COHORT_TABLE

    @property
    def cache_array(self) -> Path:
        return self.preprocess / CACHE_ARRAY

    @property
    def cache_index(self) -> Path:
        return self.preprocess / CACHE_INDEX

    @property
    def cache_config(self) -> Path:
        return self.preprocess / CACHE_CONFIG


def read_cohort(path: str | Path) -> pd.DataFrame:
    """Read a cohort table with ids kept as strings (OAI ids must not become integers)."""
    frame = pd.read_csv(path, dtype={"subject_id": str})
    missing = [c for c in COHORT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: cohort table lacks column(s) {missing}")
    return frame


def read_cache_index(path: str | Path) -> pd.DataFrame:
    """Read a slice-cache index table with ids kept as strings."""
    frame = pd.read_csv(path, dtype={"subject_id": str, "qc_reason": str})
    missing = [c for c in CACHE_INDEX_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: slice-cache index lacks column(s) {missing}")
    frame["qc_reason"] = frame["qc_reason"].fillna("")
    return frame


def open_cache(path: str | Path) -> np.ndarray:
    """Open the slice cache read-only as a memory map and check its shape and dtype."""
    cache = np.load(path, mmap_mode="r")
    expected = (2, N_SLICES, IMAGE_SIZE, IMAGE_SIZE)
    if cache.ndim != 5 or cache.shape[1] != 2 or cache.shape[2] != N_SLICES:
        raise ValueError(f"{path}: slice cache has shape {cache.shape}, expected (N, *{expected})")
    if cache.dtype != CACHE_DTYPE:
        raise ValueError(f"{path}: slice cache has dtype {cache.dtype}, expected {np.dtype(CACHE_DTYPE)}")
    return cache


def training_table(work: str | Path, model: str = "A") -> pd.DataFrame:
    """Subjects usable for training: cohort membership joined with the cache rows that passed QC.

    Returns one row per subject with ``subject_id``, ``row`` (cache row), ``label`` and the
    cohort's covariates, sorted by subject id.
    """
    paths = WorkPaths(Path(work))
    model = model.upper()
    if model not in ("A", "B"):
        raise ValueError(f"model must be 'A' or 'B', got {model!r}")
    cohort = read_cohort(paths.cohort_table)
    index = read_cache_index(paths.cache_index)
    member = cohort[cohort[f"model_{model.lower()}"].astype(bool)]
    joined = member.merge(index[index["qc_pass"].astype(bool)], on="subject_id", how="inner")
    joined["label"] = joined["label"].astype(int)
    return joined.sort_values("subject_id").reset_index(drop=True)
