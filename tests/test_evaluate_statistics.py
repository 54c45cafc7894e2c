"""Bootstrap interval, threshold metrics, calibration table and the Figure 4C subgroup table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kneepain.evaluate.bootstrap import bootstrap_auc_ci, resampled_aucs
from kneepain.evaluate.metrics import metrics_at_threshold, reliability_table, youden_threshold
from kneepain.evaluate.subgroups import subgroup_table
from kneepain.evaluate.tables import subgroup_markdown


def separable_data(n: int = 120, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(labels - 0.5) * 2 - rng.normal(size=n)))
    return labels, scores


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    labels, scores = separable_data()
    first = resampled_aucs(labels, scores, 600, seed=11)
    again = resampled_aucs(labels, scores, 600, seed=11)
    other = resampled_aucs(labels, scores, 600, seed=12)
    assert first.tobytes() == again.tobytes()
    assert not np.array_equal(first, other)
    interval = bootstrap_auc_ci(labels, scores, 600, seed=11)
    assert interval.low < roc_auc_score(labels, scores) < interval.high
    assert interval.n_used == 600


def test_bootstrap_auc_of_each_resample_matches_scikit_learn() -> None:
    labels, scores = separable_data(40)
    rng = np.random.default_rng(3)  # the same stream resampled_aucs draws from with seed 3
    index = rng.integers(0, 40, size=(5, 40))
    expected = [roc_auc_score(labels[i], scores[i]) for i in index]
    np.testing.assert_allclose(resampled_aucs(labels, scores, 5, seed=3), expected, atol=1e-12)


def test_bootstrap_drops_one_class_resamples_of_a_tiny_group() -> None:
    labels, scores = np.array([1, 0, 0, 0]), np.array([0.9, 0.2, 0.4, 0.1])
    interval = bootstrap_auc_ci(labels, scores, 500, seed=0)
    assert 0 < interval.n_used < 500  # about (3/4)^4 of resamples lack the positive
    assert interval.high == 1.0


def test_youden_threshold_maximises_sensitivity_plus_specificity() -> None:
    labels, scores = separable_data()
    threshold = youden_threshold(labels, scores)
    best = max(
        metrics_at_threshold(labels, scores, t).sensitivity
        + metrics_at_threshold(labels, scores, t).specificity
        for t in np.unique(scores)
    )
    at = metrics_at_threshold(labels, scores, threshold)
    assert at.sensitivity + at.specificity == pytest.approx(best)
    assert at.true_positive + at.false_negative == labels.sum()
    assert at.accuracy == pytest.approx((at.true_positive + at.true_negative) / labels.size)


def test_reliability_table_counts_every_subject_once_including_the_edges() -> None:
    labels = np.array([0, 1, 1, 0, 1, 1])
    scores = np.array([0.0, 0.1, 0.15, 0.95, 1.0, 0.55])
    table = reliability_table(labels, scores, n_bins=10)
    assert table["n"].sum() == 6
    assert table.loc[0, "n"] == 1 and table.loc[1, "n"] == 2  # 0.1 falls into [0.1, 0.2)
    assert table.loc[9, "n"] == 2  # 1.0 belongs to the last bin
    assert table.loc[9, "observed_fraction_right"] == 0.5
    assert math.isnan(table.loc[3, "mean_predicted"])


def cohort_predictions() -> pd.DataFrame:
    """Twelve subjects: KL missing for two, every male right-painful (one class)."""
    return pd.DataFrame(
        {
            "subject_id": [f"90000{i:02d}" for i in range(12)],
            "label": [1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0],
            "prob_right": [0.9, 0.2, 0.7, 0.4, 0.6, 0.3, 0.35, 0.5, 0.8, 0.7, 0.55, 0.1],
            "kl_right": [2, 0, 0, 1, np.nan, 0, 3, 0, 2, 1, 0, 0],
            "kl_left": [0, 0, 0, 1, 1, 2, 0, np.nan, 0, 1, 0, 3],
            "age": [65, 55, 70, 45, 61, 59, 60, 50, 72, 48, 66, 58],
            "sex": [
                "male",
                "female",
                "male",
                "female",
                "male",
                "female",
                "female",
                "female",
                "male",
                "female",
                "male",
                "female",
            ],
            "bmi": [31, 25, 29.9, 30, 22, 35, 28, 27, 33, 24, 26, 31],
        }
    )


def test_subgroup_table_marks_missing_kl_and_undefined_auc() -> None:
    frame = cohort_predictions()
    table = subgroup_table(frame).set_index("subgroup")
    assert table.loc["overall", "n"] == 12 and not table.loc["overall", "reduced"]
    # KL difference: subjects 4 and 7 lack a KL grade -> both rows reduced, 10 subjects between them
    assert (table.loc["kl_difference_0", "n"], table.loc["kl_difference_gt0", "n"]) == (5, 5)
    assert table.loc["kl_difference_0", "reduced"] and table.loc["kl_difference_gt0", "reduced"]
    assert table.loc["kl_difference_0", "n_missing"] == 2
    # KL of the painful knee: 4 is right-painful without kl_right; 7 is left-painful without kl_left
    assert table.loc["kl_painful_0", "n"] + table.loc["kl_painful_gt0", "n"] == 10
    # males are all right-painful: the AUC is undefined and said so, no crash
    assert table.loc["male", "n"] == 5
    assert math.isnan(table.loc["male", "auc"])
    assert "one class only" in table.loc["male", "note"]
    female = frame[frame["sex"] == "female"]
    assert table.loc["female", "auc"] == pytest.approx(roc_auc_score(female["label"], female["prob_right"]))
    assert table.loc["bmi_ge30", "n"] == int((frame["bmi"] >= 30).sum())
    assert table.loc["age_ge60", "n"] == int((frame["age"] >= 60).sum())
    text = subgroup_markdown(subgroup_table(frame), "Subgroups")
    assert "| Difference in KL grade between two knees = 0 | 5* |" in text
    assert "| BMI ≥ 30 | 5 |" in text  # complete variable: no asterisk
    assert "undefined" in text and "n reduced" in text


def test_subgroup_table_names_subjects_with_an_unknown_sex() -> None:
    frame = cohort_predictions()
    frame.loc[3, "sex"] = "F"
    with pytest.raises(ValueError, match=r"column sex .*9000003"):
        subgroup_table(frame, source="cohort.csv")


def test_a_subgroup_with_no_subjects_is_reported_not_a_crash() -> None:
    """A small cohort with no men (found by the GPU check's 10-participant run: IndexError, exit 70)."""
    frame = cohort_predictions().assign(sex="female")
    table = subgroup_table(frame).set_index("subgroup")
    assert table.loc["male", "n"] == 0
    assert math.isnan(table.loc["male", "auc"])
    assert table.loc["male", "note"] == "AUC undefined: no subjects"
