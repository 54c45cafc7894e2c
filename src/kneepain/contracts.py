"""The files between stages: names, columns and shapes. See docs/contracts.md.

Stages never import each other's internals; they agree on these names. Change a contract here
and in docs/contracts.md together.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

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
QC_AUDIT_TABLE = "qc_audit.csv"  # QC exclusions against the pain label
REGISTRATION_TABLE = "registration.csv"
PREDICTIONS_TABLE = "predictions.csv"
RUN_INFO = "run.json"
FOLDS_FILE = "folds.json"
SPLIT_FILE = "split.json"  # a split run's train / validation / test subject ids
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_META = "model.json"
TEMPLATE_FILE = "template.npy"  # registration templates beside the cache, and in every bundle

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


class JsonRecord:
    """Mixin for the configuration dataclasses recorded in run.json and model.json."""

    def to_json(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_json`; unknown keys (e.g. an architecture's ``name``) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


# --- a run folder (WORK/runs/<run>), as the stages after training read it ----------------------
class RunFolderError(ValueError):
    """A run folder, its run.json or its predictions table is missing or malformed; the message says where."""


@dataclass(frozen=True)
class RunFolder:
    """A run folder, what its run.json says (empty when absent) and the work folder it belongs to."""

    path: Path
    info: dict[str, Any]
    work: Path

    @property
    def run_info(self) -> Path:
        return self.path / RUN_INFO

    @property
    def predictions_table(self) -> Path:
        return self.path / PREDICTIONS_TABLE


def name_subjects(ids: Any, limit: int = 10) -> str:
    """'9000001, 9000002 (+3 more)': subject ids for an error message, shortened."""
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``run.json`` (empty when absent); a malformed file is an error naming it."""
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise RunFolderError(f"{path}: expected a JSON object")
    return info


def run_work_folder(run_dir: str | Path, info: dict[str, Any]) -> Path:
    """The work folder: ``work`` from run.json (relative to the run), else WORK of WORK/runs/<run>."""
    run_dir = Path(run_dir)
    if info.get("work"):
        work = Path(str(info["work"]))
        return work if work.is_absolute() else (run_dir / work).resolve()
    return run_dir.resolve().parent.parent


def read_run_folder(run_dir: str | Path) -> RunFolder:
    """Open a run folder: check it exists, read its run.json and find its work folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: run folder not found")
    info = read_run_info(run_dir)
    return RunFolder(run_dir, info, run_work_folder(run_dir, info))


def _bad_rows(path: Path, test: pd.DataFrame, wrong: pd.Series, problem: str) -> None:
    """Refuse the table when any test row is ``wrong``, naming the file, the problem and the subjects."""
    if wrong.any():
        raise RunFolderError(
            f"{path}: {problem} for subject(s) {name_subjects(test.loc[wrong, 'subject_id'])}"
        )


def read_test_predictions(path: str | Path) -> pd.DataFrame:
    """The rows with split ``test`` of a predictions table, one per subject, checked.

    Returns ``subject_id`` (str), ``fold`` (int), ``label`` (0/1 int) and ``prob_right`` (float in
    [0, 1]) in file order; any other state of the table is a RunFolderError naming the file, the
    column and the subjects, because every evaluation number and map is computed from these rows.
    """
    path = Path(path)
    if not path.exists():
        raise RunFolderError(f"{path}: predictions table not found (has the cv/train stage run?)")
    try:
        frame = pd.read_csv(path, dtype={"subject_id": str, "split": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path}: predictions table is not a readable CSV ({error})") from error
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise RunFolderError(f"{path}: predictions table lacks column(s) {missing}")
    test = frame[frame["split"] == "test"].copy()
    if test.empty:
        raise RunFolderError(
            f"{path}: no rows with split 'test' (splits present: {sorted(frame['split'].dropna().unique())})"
        )
    if test["subject_id"].isna().any():
        raise RunFolderError(f"{path}: {int(test['subject_id'].isna().sum())} test row(s) have no subject_id")
    duplicated = test.loc[test["subject_id"].duplicated(keep=False), "subject_id"].unique()
    if len(duplicated):
        raise RunFolderError(
            f"{path}: subject(s) appear more than once with split 'test': {name_subjects(sorted(duplicated))}"
        )
    prob = pd.to_numeric(test["prob_right"], errors="coerce")
    _bad_rows(path, test, ~np.isfinite(prob), "column prob_right is NaN or not a number")
    _bad_rows(path, test, (prob < 0) | (prob > 1), "prob_right outside [0, 1]")
    label = pd.to_numeric(test["label"], errors="coerce")
    _bad_rows(path, test, ~label.isin([0, 1]), "column label is not 0 or 1")
    fold = pd.to_numeric(test["fold"], errors="coerce")
    _bad_rows(path, test, ~np.isfinite(fold) | (fold % 1 != 0), "column fold is not a whole number")
    test["prob_right"] = prob.astype(np.float64)
    test["label"] = label.astype(int)
    test["fold"] = fold.astype(int)
    return test[["subject_id", "fold", "label", "prob_right"]].reset_index(drop=True)
