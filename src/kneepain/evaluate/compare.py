"""Paired comparisons between runs on the same subjects (DeLong's test for correlated AUCs).

The paper compared registered vs not registered, Model A vs Model B, KneeNet vs VGG16-GAP vs
AlexNet-GAP; with `paper` vs `joint` training added here. Each is two runs: the test uses only
the subjects both runs predicted, and says how many that was and how many were dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from kneepain.evaluate.delong import delong_paired_test
from kneepain.evaluate.inputs import EvaluationInputError, RunData, name_subjects

COMPARISON_COLUMNS = [
    "run",
    "other_run",
    "differs",
    "n_common",
    "n_only_run",
    "n_only_other",
    "auc_run",
    "auc_other",
    "difference",
    "standard_error",
    "z",
    "p_value",
]
_IGNORED_KEYS = {"work", "run", "name", "created", "started", "finished", "seconds", "timestamp", "host"}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def describe_difference(info_a: dict[str, Any], info_b: dict[str, Any], limit: int = 4) -> str:
    """'model: A vs B; config.registration: True vs False' from two run.json files."""
    flat_a = {k: v for k, v in _flatten(info_a).items() if k.split(".")[-1] not in _IGNORED_KEYS}
    flat_b = {k: v for k, v in _flatten(info_b).items() if k.split(".")[-1] not in _IGNORED_KEYS}
    keys = sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))
    parts = [f"{k}: {flat_a.get(k, '–')} vs {flat_b.get(k, '–')}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"+{len(keys) - limit} more")
    return "; ".join(parts) or "nothing recorded in run.json"


@dataclass(frozen=True)
class RunComparison:
    """The paired test of two runs and the subject bookkeeping behind it."""

    run: str
    other_run: str
    differs: str
    n_common: int
    n_only_run: int
    n_only_other: int
    auc_run: float
    auc_other: float
    difference: float
    standard_error: float
    z: float
    p_value: float


def compare_runs(run: RunData, other: RunData) -> RunComparison:
    """DeLong's paired test of ``other`` against ``run`` on their common subjects.

    The two runs must agree on the label of every common subject (same cohort).
    """
    a = run.predictions.set_index("subject_id")
    b = other.predictions.set_index("subject_id")
    common = sorted(set(a.index) & set(b.index))
    if not common:
        raise EvaluationInputError(
            f"{run.run_dir} and {other.run_dir}: no subject in common, nothing to compare"
        )
    disagree = [s for s in common if a.at[s, "label"] != b.at[s, "label"]]
    if disagree:
        raise EvaluationInputError(
            f"{run.run_dir} and {other.run_dir}: label differs for subject(s) {name_subjects(disagree)}"
        )
    labels = a.loc[common, "label"].to_numpy()
    test = delong_paired_test(
        labels, a.loc[common, "prob_right"].to_numpy(), b.loc[common, "prob_right"].to_numpy()
    )
    return RunComparison(
        run=run.name,
        other_run=other.name,
        differs=describe_difference(run.info, other.info),
        n_common=len(common),
        n_only_run=len(a) - len(common),
        n_only_other=len(b) - len(common),
        auc_run=test.auc_a,
        auc_other=test.auc_b,
        difference=test.difference,
        standard_error=test.standard_error,
        z=test.z,
        p_value=test.p_value,
    )


def comparison_table(comparisons: list[RunComparison]) -> pd.DataFrame:
    """All comparisons as one table (no rows when none was requested)."""
    return pd.DataFrame([c.__dict__ for c in comparisons], columns=COMPARISON_COLUMNS)
