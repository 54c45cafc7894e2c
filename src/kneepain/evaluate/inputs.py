"""Read and check a run's predictions against its work folder's cohort table.

Evaluation must never silently average over a wrong table: a subject duplicated, absent, from
another cohort, with a label that disagrees with the cohort, or with a NaN probability stops
it with a message naming the file and the subjects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.contracts import (
    CACHE_INDEX,
    PREDICTION_COLUMNS,
    PREDICTIONS_TABLE,
    WorkPaths,
    read_cache_index,
    read_cohort,
)

RUN_INFO = "run.json"
COVARIATES = ["kl_right", "kl_left", "age", "sex", "bmi"]


class EvaluationInputError(ValueError):
    """An input table is missing, malformed or inconsistent; the message names file and subjects."""


@dataclass
class RunData:
    """One run's test predictions joined with the cohort's covariates, and where they came from."""

    run_dir: Path
    name: str
    info: dict[str, Any]
    work: Path
    predictions: pd.DataFrame  # subject_id, fold, label, prob_right + COVARIATES, one row per subject
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["subject_id", "reason"]))


def name_subjects(ids: Any, limit: int = 10) -> str:
    """'9000001, 9000002 (+3 more)': subject ids for an error message, shortened."""
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` (empty when absent); a malformed file is an error naming it."""
    path = run_dir / RUN_INFO
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvaluationInputError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(info, dict):
        raise EvaluationInputError(f"{path}: expected a JSON object")
    return info


def work_folder(run_dir: Path, info: dict[str, Any]) -> Path:
    """The work folder: ``work`` from run.json (relative to the run), else WORK of WORK/runs/<run>."""
    if info.get("work"):
        work = Path(str(info["work"]))
        return work if work.is_absolute() else (run_dir / work).resolve()
    return run_dir.resolve().parent.parent


def read_predictions(path: Path) -> pd.DataFrame:
    """The test rows of a predictions table, checked: columns, labels, probabilities, duplicates."""
    if not path.exists():
        raise EvaluationInputError(f"{path}: predictions table not found (has the cv/train stage run?)")
    frame = pd.read_csv(path, dtype={"subject_id": str, "split": str})
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise EvaluationInputError(f"{path}: predictions table lacks column(s) {missing}")
    test = frame[frame["split"] == "test"].copy()
    if test.empty:
        raise EvaluationInputError(
            f"{path}: no rows with split 'test' (splits present: {sorted(frame['split'].dropna().unique())})"
        )
    if test["subject_id"].isna().any():
        raise EvaluationInputError(
            f"{path}: {int(test['subject_id'].isna().sum())} test row(s) have no subject_id"
        )
    duplicated = test.loc[test["subject_id"].duplicated(keep=False), "subject_id"].unique()
    if len(duplicated):
        raise EvaluationInputError(
            f"{path}: subject(s) appear more than once with split 'test': {name_subjects(sorted(duplicated))}"
        )
    prob = pd.to_numeric(test["prob_right"], errors="coerce")
    bad = test.loc[~np.isfinite(prob), "subject_id"]
    if len(bad):
        raise EvaluationInputError(
            f"{path}: column prob_right is NaN or not a number for subject(s) {name_subjects(bad)}"
        )
    outside = test.loc[(prob < 0) | (prob > 1), "subject_id"]
    if len(outside):
        raise EvaluationInputError(
            f"{path}: prob_right outside [0, 1] for subject(s) {name_subjects(outside)}"
        )
    label = pd.to_numeric(test["label"], errors="coerce")
    bad_label = test.loc[~label.isin([0, 1]), "subject_id"]
    if len(bad_label):
        raise EvaluationInputError(
            f"{path}: column label is not 0 or 1 for subject(s) {name_subjects(bad_label)}"
        )
    test["prob_right"] = prob.astype(np.float64)
    test["label"] = label.astype(int)
    return test[["subject_id", "fold", "label", "prob_right"]].reset_index(drop=True)


def truthy(column: pd.Series) -> pd.Series:
    """Booleans written as True/False, 1/0 or 'true'/'false' text; missing counts as False."""
    text = column.astype("string").str.strip().str.lower()
    return text.isin(["true", "1", "1.0", "yes"]).fillna(False).astype(bool)


def _qc_failures(work: Path) -> pd.DataFrame:
    """Subjects whose cache row failed QC (subject_id, reason); empty when preprocess has not run."""
    path = WorkPaths(work).preprocess / CACHE_INDEX
    if not path.exists():
        return pd.DataFrame(columns=["subject_id", "reason"])
    index = read_cache_index(path)
    failed = index[~truthy(index["qc_pass"])]
    return pd.DataFrame({"subject_id": failed["subject_id"], "reason": "failed QC: " + failed["qc_reason"]})


def load_run(run_dir: str | Path, allow_missing: bool = False) -> RunData:
    """Read a run folder's predictions, check them against the cohort table and join covariates.

    A cohort member of the run's model (run.json ``model``) that is absent from the predictions is
    an error unless its cache row failed QC (then it is recorded as excluded with that reason) or
    ``allow_missing`` is set (then it is recorded as excluded, "absent from predictions").
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EvaluationInputError(f"{run_dir}: run folder not found")
    info = read_run_info(run_dir)
    work = work_folder(run_dir, info)
    predictions_path = run_dir / PREDICTIONS_TABLE
    test = read_predictions(predictions_path)
    all_rows = pd.read_csv(predictions_path, dtype={"subject_id": str}, usecols=["subject_id"])

    cohort_path = WorkPaths(work).cohort_table
    if not cohort_path.exists():
        raise EvaluationInputError(
            f"{cohort_path}: cohort table not found (work folder {work}, from {run_dir / RUN_INFO})"
        )
    try:
        cohort = read_cohort(cohort_path)
    except ValueError as error:
        raise EvaluationInputError(str(error)) from error
    twice = cohort.loc[cohort["subject_id"].duplicated(), "subject_id"]
    if len(twice):
        raise EvaluationInputError(f"{cohort_path}: subject(s) listed more than once: {name_subjects(twice)}")

    strangers = sorted(set(test["subject_id"]) - set(cohort["subject_id"]))
    if strangers:
        raise EvaluationInputError(
            f"{predictions_path}: subject(s) not in the cohort table {cohort_path} "
            f"(predictions from another cohort?): {name_subjects(strangers)}"
        )
    joined = test.merge(
        cohort[["subject_id", "label", *COVARIATES]], on="subject_id", suffixes=("", "_cohort")
    )
    disagree = joined.loc[
        pd.to_numeric(joined["label_cohort"], errors="coerce") != joined["label"], "subject_id"
    ]
    if len(disagree):
        raise EvaluationInputError(
            f"{predictions_path}: column label disagrees with {cohort_path} "
            f"for subject(s) {name_subjects(disagree)}"
        )
    joined = joined.drop(columns=["label_cohort"])

    excluded = pd.DataFrame(columns=["subject_id", "reason"])
    model = str(info.get("model", "")).upper()
    if model in ("A", "B"):
        members = set(cohort.loc[truthy(cohort[f"model_{model.lower()}"]), "subject_id"])
        absent = members - set(all_rows["subject_id"])
        qc = _qc_failures(work)
        excused = qc[qc["subject_id"].isin(absent)]
        unexplained = sorted(absent - set(excused["subject_id"]))
        if unexplained and not allow_missing:
            raise EvaluationInputError(
                f"{predictions_path}: Model {model} member(s) of {cohort_path} missing from the predictions, "
                f"with no QC failure on record: {name_subjects(unexplained)} "
                "(pass --allow-missing to evaluate without them)"
            )
        missing = pd.DataFrame(
            {"subject_id": unexplained, "reason": "absent from predictions (--allow-missing)"}
        )
        excluded = pd.concat([excused, missing], ignore_index=True)
    return RunData(
        run_dir, run_dir.name, info, work, joined, excluded.sort_values("subject_id").reset_index(drop=True)
    )
