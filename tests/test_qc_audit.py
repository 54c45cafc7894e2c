"""The QC audit flags exclusions that depend on the pain label, and only those."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kneepain.preprocess.qc_audit import (
    KNEES_COMPARISON,
    SUBJECTS_COMPARISON,
    AuditRule,
    audit_qc,
    audit_warnings,
)
from kneepain.preprocess.quality import FLAGS


def _tables(n: int, seed: int, flag_rate_painful: float, flag_rate_other: float):
    """A cohort of n people with unilateral pain and a qc table where 'high_contrast' fires at the
    given rates on painful and pain-free knees."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    ids = [f"9{i:06d}" for i in range(n)]
    cohort = pd.DataFrame({"subject_id": ids, "label": labels, "model_a": True})
    rows = []
    for subject, label in zip(ids, labels, strict=True):
        for side in ("left", "right"):
            painful = (side == "right") == (label == 1)
            fired = rng.random() < (flag_rate_painful if painful else flag_rate_other)
            rows.append(
                {
                    "subject_id": subject,
                    "side": side,
                    **{flag: False for flag in FLAGS},
                    "high_contrast": fired,
                    "auto_pass": not fired,
                    "qc_pass": not fired,
                }
            )
    return pd.DataFrame(rows), cohort


def _row(audit: pd.DataFrame, rule: str, comparison: str) -> pd.Series:
    return audit[(audit["rule"] == rule) & (audit["comparison"] == comparison)].iloc[0]


def test_planted_pain_dependent_exclusion_is_flagged() -> None:
    qc, cohort = _tables(400, seed=3, flag_rate_painful=0.15, flag_rate_other=0.02)
    audit = audit_qc(qc, cohort)
    knees = _row(audit, "high_contrast", KNEES_COMPARISON)
    assert knees["label_dependent"]
    assert knees["rate_a"] > 3 * knees["rate_b"]
    assert knees["p_value"] < 1e-4
    assert knees["n_a"] == knees["n_b"] == 400
    assert _row(audit, "final decision", KNEES_COMPARISON)["label_dependent"]
    warnings = audit_warnings(audit)
    assert any("high_contrast" in line and "painful" in line for line in warnings)


def test_independent_exclusion_is_not_flagged() -> None:
    qc, cohort = _tables(1500, seed=4, flag_rate_painful=0.08, flag_rate_other=0.08)
    audit = audit_qc(qc, cohort)
    for comparison in (KNEES_COMPARISON, SUBJECTS_COMPARISON):
        row = _row(audit, "high_contrast", comparison)
        assert not row["label_dependent"], row.to_dict()
        assert row["p_value"] > 0.05
    assert audit_warnings(audit) == []


def test_exclusion_tied_to_the_right_knee_shows_in_the_label_comparison() -> None:
    """A rule that drops right knees only: painful vs other knees is balanced, but label 1 (right
    painful) vs 0 is not, when the rule hits painful knees only on the right."""
    qc, cohort = _tables(600, seed=5, flag_rate_painful=0.0, flag_rate_other=0.0)
    right_painful = set(cohort.loc[cohort["label"] == 1, "subject_id"])
    hit = (qc["side"] == "right") & qc["subject_id"].isin(right_painful)
    hit &= np.random.default_rng(0).random(len(qc)) < 0.2
    qc.loc[hit, ["high_contrast"]] = True
    qc.loc[hit, ["auto_pass", "qc_pass"]] = False
    audit = audit_qc(qc, cohort)
    subjects = _row(audit, "high_contrast", SUBJECTS_COMPARISON)
    assert subjects["label_dependent"] and subjects["excluded_b"] == 0


def test_small_counts_need_the_test_or_five_exclusions() -> None:
    rule = AuditRule()
    assert not rule.flags(excluded=3, p_value=0.3, rate_ratio=3.0)
    assert rule.flags(excluded=6, p_value=0.3, rate_ratio=3.0)
    assert rule.flags(excluded=6, p_value=0.3, rate_ratio=1 / 3.0)
    assert rule.flags(excluded=2, p_value=0.01, rate_ratio=1.1)
    assert not rule.flags(excluded=40, p_value=0.4, rate_ratio=1.2)


def test_the_warning_says_which_criterion_fired() -> None:
    """A significant difference 'depends on pain'; a large ratio over few exclusions (the challenge
    cohort's 6/252 painful vs 2/252 other knees, p 0.29) only 'may depend', with its ratio."""
    rows = [
        {"rule": "motion", "comparison": KNEES_COMPARISON, "excluded_a": 40, "n_a": 252, "excluded_b": 5,
         "n_b": 252, "rate_a": 40 / 252, "rate_b": 5 / 252, "rate_ratio": 8.0, "p_value": 1e-8,
         "label_dependent": True},
        {"rule": "final decision", "comparison": KNEES_COMPARISON, "excluded_a": 6, "n_a": 252,
         "excluded_b": 2, "n_b": 252, "rate_a": 6 / 252, "rate_b": 2 / 252, "rate_ratio": 3.0,
         "p_value": 0.285, "label_dependent": True},
        {"rule": "blank_slices", "comparison": SUBJECTS_COMPARISON, "excluded_a": 1, "n_a": 115,
         "excluded_b": 1, "n_b": 135, "rate_a": 1 / 115, "rate_b": 1 / 135, "rate_ratio": 1.17,
         "p_value": 1.0, "label_dependent": False},
    ]  # fmt: skip
    significant, weak = audit_warnings(pd.DataFrame(rows))
    assert "'motion'" in significant and "the exclusion depends on pain;" in significant
    assert "'final decision'" in weak and "may depend on pain (rate ratio 3 over 8 exclusions" in weak
    assert "p = 0.285" in weak
