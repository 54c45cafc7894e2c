"""QC audited against the pain label: does any exclusion rule remove painful knees preferentially?

A QC rule that flags, say, bright fluid removes knees with effusion, and effusion is far more common
in painful knees: the excluded cohort would then be biased toward easy cases. This module compares,
for each QC flag and for the final decision, the exclusion rate of painful and pain-free knees (and
of Model A subjects with label 1 and 0) with Fisher's exact test, and says which rules look
label-dependent. It reads only ``qc.csv`` and ``cohort.csv``; it never changes a decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact

from kneepain import fileio
from kneepain.contracts import LABEL_RIGHT_PAINFUL, QC_AUDIT_TABLE, QC_REPORT, WorkPaths, read_cohort
from kneepain.preprocess.quality import FLAGS

AUDIT_COLUMNS = [
    "rule",
    "comparison",
    "excluded_a",
    "n_a",
    "excluded_b",
    "n_b",
    "rate_a",
    "rate_b",
    "rate_ratio",
    "p_value",
    "label_dependent",
]
# The two comparisons: knees (painful vs the other knee of the same people) and Model A subjects.
KNEES_COMPARISON = "painful vs other knee"
SUBJECTS_COMPARISON = "Model A label 1 vs 0"


@dataclass(frozen=True)
class AuditRule:
    """When an exclusion counts as label-dependent: p below ``alpha``, or a rate ratio beyond
    ``ratio`` (either way) with at least ``min_excluded`` exclusions in all."""

    alpha: float = 0.05
    ratio: float = 1.5
    min_excluded: int = 5

    def flags(self, excluded: int, p_value: float, rate_ratio: float) -> bool:
        far = max(rate_ratio, 1 / rate_ratio) > self.ratio if rate_ratio > 0 else excluded > 0
        return bool(p_value < self.alpha or (far and excluded >= self.min_excluded))


def _compare(rule: str, comparison: str, a: pd.Series, b: pd.Series, criteria: AuditRule) -> dict:
    """One row: exclusion counts and rates of groups a and b, rate ratio a/b, Fisher's exact p."""
    excluded_a, n_a, excluded_b, n_b = int(a.sum()), len(a), int(b.sum()), len(b)
    rate_a = excluded_a / n_a if n_a else math.nan
    rate_b = excluded_b / n_b if n_b else math.nan
    # No exclusions in b: infinitely more in a if a has any, else no difference at all.
    ratio = rate_a / rate_b if rate_b > 0 else (math.inf if rate_a > 0 else 1.0)
    if n_a and n_b:
        _, p_value = fisher_exact([[excluded_a, n_a - excluded_a], [excluded_b, n_b - excluded_b]])
    else:
        p_value = math.nan
    return {
        "rule": rule,
        "comparison": comparison,
        "excluded_a": excluded_a,
        "n_a": n_a,
        "excluded_b": excluded_b,
        "n_b": n_b,
        "rate_a": rate_a,
        "rate_b": rate_b,
        "rate_ratio": ratio,
        "p_value": float(p_value),
        "label_dependent": criteria.flags(excluded_a + excluded_b, float(p_value), ratio),
    }


def audit_qc(qc: pd.DataFrame, cohort: pd.DataFrame, criteria: AuditRule | None = None) -> pd.DataFrame:
    """The audit table: one row per rule (``any automatic flag``, each flag, ``final decision``)
    and comparison. Knees: painful vs pain-free knee of the people with unilateral pain (group a is
    the painful knee). Subjects: Model A members with label 1 (a) vs 0 (b); a subject counts as
    excluded when either knee is.
    """
    criteria = criteria or AuditRule()
    people = cohort.loc[cohort["label"].notna(), ["subject_id", "label", "model_a"]].copy()
    knees = qc.merge(people, on="subject_id", how="inner")
    if knees.empty:
        return pd.DataFrame(columns=AUDIT_COLUMNS)
    painful_side = np.where(knees["label"].astype(int) == LABEL_RIGHT_PAINFUL, "right", "left")
    painful = knees["side"].to_numpy() == painful_side
    rules: dict[str, pd.Series] = {"any automatic flag": ~knees["auto_pass"].astype(bool)}
    for flag in FLAGS:
        if flag in knees.columns and knees[flag].astype(bool).any():
            rules[flag] = knees[flag].astype(bool)
    rules["final decision"] = ~knees["qc_pass"].astype(bool)

    model_a = knees["model_a"].astype(bool).to_numpy()
    rows = []
    for name, excluded in rules.items():
        rows.append(_compare(name, KNEES_COMPARISON, excluded[painful], excluded[~painful], criteria))
        subjects = (
            pd.DataFrame({"subject_id": knees["subject_id"], "excluded": excluded, "label": knees["label"]})
            .loc[model_a]
            .groupby("subject_id")
            .agg(excluded=("excluded", "any"), label=("label", "first"))
        )
        one = subjects["label"].astype(int) == LABEL_RIGHT_PAINFUL
        dropped = subjects["excluded"]
        rows.append(_compare(name, SUBJECTS_COMPARISON, dropped[one], dropped[~one], criteria))
    return pd.DataFrame(rows, columns=AUDIT_COLUMNS)


def audit_warnings(audit: pd.DataFrame, criteria: AuditRule | None = None) -> list[str]:
    """One plain sentence per label-dependent row, for the console and the report: which rule,
    the two exclusion rates, and which criterion fired (a significant difference, or a large
    rate ratio over enough exclusions that is not significant on its own)."""
    criteria = criteria or AuditRule()
    lines = []
    for row in audit[audit["label_dependent"].astype(bool)].itertuples(index=False):
        knees = row.comparison == KNEES_COMPARISON
        groups = ("painful knees", "other knees") if knees else ("right-painful", "left-painful")
        what = "pain" if knees else "the painful side"
        excluded = row.excluded_a + row.excluded_b
        ratio = "infinite" if math.isinf(row.rate_ratio) else f"{row.rate_ratio:.2g}"
        verdict = (
            f"the exclusion depends on {what}"
            if row.p_value < criteria.alpha
            else f"the exclusion may depend on {what} (rate ratio {ratio} over {excluded} exclusions; "
            f"not significant alone)"
        )
        lines.append(
            f"QC rule '{row.rule}' excludes {row.rate_a:.1%} of {groups[0]} ({row.excluded_a}/{row.n_a}) "
            f"vs {row.rate_b:.1%} of {groups[1]} ({row.excluded_b}/{row.n_b}), Fisher p = {row.p_value:.3g}: "
            f"{verdict}; review these knees (--qc-overrides re-admits them)"
        )
    return lines


def write_qc_audit(work: Path) -> pd.DataFrame:
    """Audit ``WORK/preprocess/qc.csv`` against ``WORK/ingest/cohort.csv`` and write
    ``WORK/preprocess/qc_audit.csv``; returns the table."""
    paths = WorkPaths(Path(work))
    qc = pd.read_csv(paths.preprocess / QC_REPORT, dtype={"subject_id": str})
    audit = audit_qc(qc, read_cohort(paths.cohort_table))
    fileio.write_csv(paths.preprocess / QC_AUDIT_TABLE, audit)
    return audit
