"""Split balance of a cross-validation run: per fold, who trained, who stopped the training, who was tested.

The paper reports the balance of its 70/15/15 split (its Table 2; `kneepain split` writes that as
``split_balance.csv``). A cross-validation run has one such split per fold; this table gives, for
each fold and part, the subjects, the share with the right knee painful, the share of women, and
age and BMI, so a reader can see that no fold was tested on a different population.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kneepain.contracts import FOLDS_FILE, LABEL_RIGHT_PAINFUL

FOLD_BALANCE_TABLE = "fold_balance.csv"
PARTS = ("train", "validation", "test")
FOLD_BALANCE_COLUMNS = [
    "fold",
    "part",
    "n",
    "right_painful_pct",
    "women_pct",
    "age_mean",
    "age_sd",
    "bmi_mean",
    "bmi_sd",
]


def validation_ids(run_dir: Path, n_folds: int) -> list[set[str]]:
    """Each fold's early-stopping subjects from ``folds.json`` (empty sets when it records none)."""
    path = run_dir / FOLDS_FILE
    empty: list[set[str]] = [set() for _ in range(n_folds)]
    if not path.exists():
        return empty
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("validation") or []
    except (OSError, ValueError, AttributeError):
        return empty
    if len(recorded) != n_folds:
        return empty
    return [{str(s) for s in ids} for ids in recorded]


def _describe(members: pd.DataFrame) -> dict[str, float]:
    """n, % right painful, % women, age and BMI mean and SD of one part (never empty here)."""
    age = pd.to_numeric(members["age"], errors="coerce")
    bmi = pd.to_numeric(members["bmi"], errors="coerce")
    return {
        "n": len(members),
        "right_painful_pct": 100.0 * (members["label"] == LABEL_RIGHT_PAINFUL).mean(),
        "women_pct": 100.0 * (members["sex"] == "female").mean(),
        "age_mean": float(age.mean()),
        "age_sd": float(age.std(ddof=1)),
        "bmi_mean": float(bmi.mean()),
        "bmi_sd": float(bmi.std(ddof=1)),
    }


def fold_balance(predictions: pd.DataFrame, run_dir: Path) -> pd.DataFrame | None:
    """Per fold and part (train, validation, test): n, % right painful, % women, age and BMI.

    ``predictions`` are a cross-validation run's out-of-fold rows joined with the cohort's
    covariates (``label``, ``sex``, ``age``, ``bmi``), every member once: fold k's test part is its
    rows, its validation part the ids ``folds.json`` records, its training part everyone else.
    None for a run with one fold (a single split predicts its test part only; `kneepain split`
    writes its own balance table).
    """
    folds = sorted(int(f) for f in predictions["fold"].unique())
    if len(folds) < 2:
        return None
    held = validation_ids(run_dir, len(folds))
    rows = []
    for position, fold in enumerate(folds):
        test = predictions["fold"] == fold
        validation = ~test & predictions["subject_id"].isin(held[position])
        parts = {"train": predictions[~test & ~validation], "validation": predictions[validation]}
        parts["test"] = predictions[test]
        for part in PARTS:
            if part == "validation" and parts[part].empty:
                continue
            rows.append({"fold": fold, "part": part, **_describe(parts[part])})
    return pd.DataFrame(rows, columns=FOLD_BALANCE_COLUMNS)
