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

import pandas as pd

from kneepain.contracts import (
    CACHE_INDEX,
    SPLIT_FILE,
    RunFolderError,
    WorkPaths,
    name_subjects,
    read_cache_index,
    read_cohort,
    read_run_folder,
    read_test_predictions,
)

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


def _split_test_part(path: Path) -> set[str]:
    """The test subject ids of a split run's split.json."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        return {str(subject) for subject in split["test"]}
    except FileNotFoundError as error:
        raise EvaluationInputError(
            f"{path}: split file not found (run.json says this is a split run)"
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise EvaluationInputError(f"{path}: not a split file with a 'test' list ({error})") from error


def load_run(run_dir: str | Path, allow_missing: bool = False) -> RunData:
    """Read a run folder's predictions, check them against the cohort table and join covariates.

    A cohort member of the run's model (run.json ``model``) that is absent from the predictions is
    an error unless its cache row failed QC (then it is recorded as excluded with that reason) or
    ``allow_missing`` is set (then it is recorded as excluded, "absent from predictions").
    """
    try:
        folder = read_run_folder(run_dir)
        test = read_test_predictions(folder.predictions_table)
    except RunFolderError as error:
        raise EvaluationInputError(str(error)) from error
    run_dir, info, work, predictions_path = folder.path, folder.info, folder.work, folder.predictions_table
    all_rows = pd.read_csv(predictions_path, dtype={"subject_id": str}, usecols=["subject_id"])

    cohort_path = WorkPaths(work).cohort_table
    if not cohort_path.exists():
        raise EvaluationInputError(
            f"{cohort_path}: cohort table not found (work folder {work}, from {folder.run_info})"
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
        if info.get("kind") == "split":  # a split run predicts its test part only: that is its cohort
            members &= _split_test_part(run_dir / SPLIT_FILE)
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
