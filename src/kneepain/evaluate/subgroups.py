"""The subgroup table of the paper's Figure 4C: n and AUC with a DeLong interval per row.

Rows: overall; KL-grade difference between the knees = 0 vs > 0; KL grade of the painful knee
= 0 vs > 0; BMI >= 30 vs < 30; age >= 60 vs < 60; male vs female. A subject whose variable is
missing is left out of both rows of that variable, and the rows are marked (n reduced, an
asterisk in the Markdown table), as the paper did for missing KL grades. A row with one class
only has an undefined AUC, stated in its note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneepain.evaluate.delong import OneClassError, delong_ci

SUBGROUP_COLUMNS = [
    "subgroup",
    "description",
    "n",
    "n_right_painful",
    "n_left_painful",
    "n_missing",
    "reduced",
    "auc",
    "ci_low",
    "ci_high",
    "note",
]
SEXES = ("female", "male")
VARIABLE_WORDS = {
    "kl_difference": "a KL grade",
    "kl_painful": "a KL grade",
    "bmi": "BMI",
    "age": "age",
    "sex": "sex",
}


@dataclass(frozen=True)
class Subgroup:
    """One row: a name, the paper's wording, the variable it splits on and the rule."""

    key: str
    description: str
    variable: str
    rule: Callable[[pd.Series], pd.Series]


SUBGROUPS = (
    Subgroup("overall", "Overall", "", lambda v: pd.Series(True, index=v.index)),
    Subgroup(
        "kl_difference_0", "Difference in KL grade between two knees = 0", "kl_difference", lambda v: v == 0
    ),
    Subgroup(
        "kl_difference_gt0", "Difference in KL grade between two knees > 0", "kl_difference", lambda v: v > 0
    ),
    Subgroup("kl_painful_0", "KL grade of the painful knee = 0", "kl_painful", lambda v: v == 0),
    Subgroup("kl_painful_gt0", "KL grade of the painful knee > 0", "kl_painful", lambda v: v > 0),
    Subgroup("bmi_ge30", "BMI ≥ 30", "bmi", lambda v: v >= 30),
    Subgroup("bmi_lt30", "BMI < 30", "bmi", lambda v: v < 30),
    Subgroup("age_ge60", "Age ≥ 60", "age", lambda v: v >= 60),
    Subgroup("age_lt60", "Age < 60", "age", lambda v: v < 60),
    Subgroup("male", "Male", "sex", lambda v: v == "male"),
    Subgroup("female", "Female", "sex", lambda v: v == "female"),
)


def _numeric(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = frame.loc[values.isna() & frame[column].notna(), "subject_id"]
    if len(bad):
        raise ValueError(
            f"{source}: column {column} is not a number for subject(s) {', '.join(bad.astype(str))}"
        )
    return values


def subgroup_variables(frame: pd.DataFrame, source: str = "cohort table") -> pd.DataFrame:
    """The variables the subgroups split on, derived from label and cohort covariates (NaN = missing)."""
    kl_right = _numeric(frame, "kl_right", source)
    kl_left = _numeric(frame, "kl_left", source)
    sex = frame["sex"].astype("string").str.strip().str.lower()
    odd = frame.loc[sex.notna() & ~sex.isin(SEXES), "subject_id"]
    if len(odd):
        raise ValueError(
            f"{source}: column sex must be 'female' or 'male'; subject(s) {', '.join(odd.astype(str))}"
        )
    return pd.DataFrame(
        {
            "kl_difference": (kl_right - kl_left).abs(),
            "kl_painful": np.where(frame["label"].to_numpy() == 1, kl_right, kl_left),
            "bmi": _numeric(frame, "bmi", source),
            "age": _numeric(frame, "age", source),
            "sex": sex.astype(object).where(sex.notna(), None),
        },
        index=frame.index,
    )


def subgroup_table(frame: pd.DataFrame, level: float = 0.95, source: str = "cohort table") -> pd.DataFrame:
    """One row per subgroup of Figure 4C from a table with label, prob_right and the covariates."""
    variables = subgroup_variables(frame, source)
    labels = frame["label"].to_numpy().astype(int)
    scores = frame["prob_right"].to_numpy().astype(np.float64)
    rows = []
    for group in SUBGROUPS:
        if group.variable:
            value = variables[group.variable]
            known = value.notna().to_numpy()
            inside = known & group.rule(value).fillna(False).to_numpy(dtype=bool)
        else:
            known = np.ones(len(frame), dtype=bool)
            inside = known
        y, s = labels[inside], scores[inside]
        n_missing = int((~known).sum())
        row = {
            "subgroup": group.key,
            "description": group.description,
            "n": int(inside.sum()),
            "n_right_painful": int(y.sum()),
            "n_left_painful": int(inside.sum() - y.sum()),
            "n_missing": n_missing,
            "reduced": n_missing > 0,
            "auc": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "note": "",
        }
        try:
            estimate = delong_ci(y, s, level)
        except OneClassError:
            row["note"] = "AUC undefined: no subjects" if not len(y) else "AUC undefined: one class only"
        else:
            row.update(auc=estimate.auc, ci_low=estimate.ci_low, ci_high=estimate.ci_high)
            if math.isnan(estimate.ci_low):
                row["note"] = "CI undefined: fewer than 2 subjects in a class"
        if n_missing:
            missing_note = f"{n_missing} subject(s) without {VARIABLE_WORDS[group.variable]}"
            row["note"] = f"{row['note']}; {missing_note}" if row["note"] else missing_note
        rows.append(row)
    return pd.DataFrame(rows, columns=SUBGROUP_COLUMNS)
