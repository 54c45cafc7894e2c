"""The paper's cohorts: unilateral frequent knee pain (label), both SAG_IW_TSE series (Model A),
and a WOMAC pain difference of at least 3 between knees (Model B).

Every participant considered gets a row; anyone not in Model A carries the first reason that
excluded them, and anyone in Model A but not Model B carries the reason in ``model_b_reason``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneepain.contracts import COHORT_COLUMNS, LABEL_LEFT_PAINFUL, LABEL_RIGHT_PAINFUL
from kneepain.ingest.clinical import ClinicalVariables
from kneepain.ingest.dicom_scan import SERIES_NAME

# Extra columns after the contract's: why a Model A member is not in Model B, and every missing
# clinical value with its OAI missing code.
EXTRA_COHORT_COLUMNS = ["model_b_reason", "missing_values"]


@dataclass(frozen=True)
class SelectionRules:
    """What the paper's selection depends on; variable names are configurable (OAI labels vary)."""

    pain_right: str = "P01KPNREV"
    pain_left: str = "P01KPNLEV"
    womac_right: str = "V00WOMKPR"
    womac_left: str = "V00WOMKPL"
    womac_difference: float = 3.0


def _series_state(series: pd.DataFrame) -> dict[tuple[str, str], str | None]:
    """(subject, side) -> None when one readable series exists, else the problem text."""
    state: dict[tuple[str, str], str | None] = {}
    for (subject, side), group in series.groupby(["subject_id", "side"], sort=False):
        problems = [p for p in group["problem"].fillna("").astype(str) if p]
        state[(str(subject), str(side))] = problems[0] if problems else None
    return state


def _series_exclusion(problem: str) -> str:
    """Exclusion text for a series problem: unreadable files and broken series read differently."""
    if problem.startswith("duplicated"):
        return problem
    if "unreadable DICOM" in problem or "truncated file" in problem or "lacks a needed tag" in problem:
        return f"unreadable series: {problem}"
    return f"bad series: {problem}"


def select_cohort(
    clinical: ClinicalVariables,
    kl: pd.DataFrame,
    series: pd.DataFrame,
    rules: SelectionRules | None = None,
) -> pd.DataFrame:
    """One row per participant (clinical files and image tree together), COHORT_COLUMNS + extras.

    ``kl`` has columns kl_right / kl_left indexed by subject id; ``series`` is the series table.
    """
    rules = rules or SelectionRules()
    values = clinical.values
    state = _series_state(series)
    image_subjects = {s for s, _ in state}
    subjects = sorted(set(values.index) | image_subjects)
    all_name = getattr(clinical.files.get("all_clinical"), "name", "AllClinical00")
    enr_name = getattr(clinical.files.get("enrollees"), "name", "Enrollees")
    rows = []
    for subject in subjects:
        known = subject in values.index
        row = {c: np.nan for c in COHORT_COLUMNS}
        row.update(subject_id=subject, exclusion="", model_b_reason="", missing_values="")
        if known:
            for column in ("pain_right", "pain_left", "womac_right", "womac_left", "age", "bmi"):
                row[column] = values.at[subject, column]
            row["sex"] = clinical.sex.get(subject, np.nan)
            reasons = clinical.missing.loc[subject]
            row["missing_values"] = "; ".join(f"{k}: {v}" for k, v in reasons.items() if v)
        if subject in kl.index:
            row["kl_right"], row["kl_left"] = kl.at[subject, "kl_right"], kl.at[subject, "kl_left"]
        row["has_left_series"] = (subject, "left") in state
        row["has_right_series"] = (subject, "right") in state
        right, left = row["pain_right"], row["pain_left"]
        if right == 1 and left == 0:
            row["label"] = LABEL_RIGHT_PAINFUL
        elif left == 1 and right == 0:
            row["label"] = LABEL_LEFT_PAINFUL
        row["exclusion"] = _first_exclusion(subject, row, clinical, state, rules, all_name, enr_name)
        row["model_a"] = row["exclusion"] == ""
        row["model_b_reason"] = _model_b_reason(row, clinical, rules) if row["model_a"] else ""
        row["model_b"] = bool(row["model_a"] and row["model_b_reason"] == "")
        rows.append(row)
    table = pd.DataFrame(rows, columns=COHORT_COLUMNS + EXTRA_COHORT_COLUMNS)
    table["label"] = table["label"].astype("Int64")
    for column in ("kl_right", "kl_left"):
        grades = table[column].astype(float)
        if (grades.dropna() % 1 == 0).all():  # whole grades print as 0-4, not 0.0-4.0
            table[column] = grades.astype("Int64")
    return table


def _first_exclusion(
    subject: str,
    row: dict,
    clinical: ClinicalVariables,
    state: dict[tuple[str, str], str | None],
    rules: SelectionRules,
    all_name: object,
    enr_name: object,
) -> str:
    """The first reason (in selection order) that keeps a participant out of Model A, or ''."""
    if subject in clinical.duplicated:
        return clinical.duplicated[subject]
    if subject not in clinical.in_all_clinical:
        return f"subject {subject} has no row in {all_name}"
    if subject not in clinical.in_enrollees:
        return f"subject {subject} is in {all_name} but not in {enr_name}"
    for column, variable in (("pain_right", rules.pain_right), ("pain_left", rules.pain_left)):
        reason = clinical.missing.at[subject, column]
        if reason:
            return f"missing pain variable {variable} ({reason})"
    right, left = row["pain_right"], row["pain_left"]
    if {right, left} - {0.0, 1.0}:
        return (
            f"unexpected pain values {rules.pain_right}={right:g}, {rules.pain_left}={left:g} (expected 0/1)"
        )
    if right == 0 and left == 0:
        return "no frequent pain"
    if right == 1 and left == 1:
        return "bilateral frequent pain"
    for side in ("left", "right"):
        if (subject, side) not in state:
            return f"no {SERIES_NAME}_{side.upper()} series"
    for side in ("left", "right"):
        problem = state[(subject, side)]
        if problem:
            return _series_exclusion(problem)
    return ""


def _model_b_reason(row: dict, clinical: ClinicalVariables, rules: SelectionRules) -> str:
    """Why a Model A member is not in Model B ('' when it is)."""
    subject = row["subject_id"]
    for column, variable in (("womac_right", rules.womac_right), ("womac_left", rules.womac_left)):
        reason = clinical.missing.at[subject, column]
        if reason:
            return f"missing WOMAC pain {variable} ({reason})"
    difference = abs(row["womac_right"] - row["womac_left"])
    if difference < rules.womac_difference:
        return f"WOMAC pain difference {difference:g} < {rules.womac_difference:g}"
    return ""


def funnel(cohort: pd.DataFrame, qc_excluded: Iterable[str] | None = None) -> pd.DataFrame:
    """The selection funnel of the paper's Table 1a from a cohort table.

    Rows: participants, unilateral frequent pain, SAG_IW_TSE present in both knees, both series
    readable and clinical records complete (Model A before image QC), then Model B. With
    ``qc_excluded`` (subject ids failing image QC, known after preprocess) the rows
    "Model A after QC" and "Model B after QC" are added. Columns: step, n, left_pain, right_pain.
    """
    label = cohort["label"]
    model_a = cohort["model_a"].astype(bool)
    model_b = cohort["model_b"].astype(bool)
    both = label.notna() & cohort["has_left_series"].astype(bool) & cohort["has_right_series"].astype(bool)
    steps: list[tuple[str, pd.Series]] = [
        ("participants", pd.Series(True, index=cohort.index)),
        ("unilateral frequent pain", label.notna()),
        (f"{SERIES_NAME} in both knees", both),
        ("series readable, records complete (Model A before QC)", model_a),
    ]
    if qc_excluded is not None:
        passed = ~cohort["subject_id"].astype(str).isin({str(s) for s in qc_excluded})
        steps.append(("Model A after QC", model_a & passed))
        steps.append(("WOMAC pain difference (Model B)", model_b))
        steps.append(("Model B after QC", model_b & passed))
    else:
        steps.append(("WOMAC pain difference (Model B)", model_b))
    rows = []
    for name, mask in steps:
        rows.append(
            {
                "step": name,
                "n": int(mask.sum()),
                "left_pain": int((mask & (label == LABEL_LEFT_PAINFUL)).fillna(False).sum()),
                "right_pain": int((mask & (label == LABEL_RIGHT_PAINFUL)).fillna(False).sum()),
            }
        )
    return pd.DataFrame(rows, columns=["step", "n", "left_pain", "right_pain"])
