"""DeLong's AUC variance, interval and paired test against independent implementations.

References: MLstatkit's ``Delong_test`` (a PyPI package, test-only dependency), a slow direct
O(n0 * n1) structural-components computation written here, and AUC = U / (n1 n0) from
scipy's Mann-Whitney test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from MLstatkit import Delong_test
from scipy.stats import mannwhitneyu

from kneepain.evaluate.delong import OneClassError, delong_ci, delong_covariance, delong_paired_test


def direct_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong (1988) by definition: psi over every positive-negative pair, ties counted 1/2."""
    positive = labels.astype(bool)
    aucs, v10, v01 = [], [], []
    for s in np.atleast_2d(scores):
        x, y = s[positive], s[~positive]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    m, n = v10.shape[1], v01.shape[1]
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    return np.array(aucs), s10 / m + s01 / n


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(labels, scores a, scores b): continuous, heavy ties, tiny classes, unbalanced."""
    rng = np.random.default_rng(20260101)
    out = {}
    labels = rng.integers(0, 2, 200)
    a = labels * 0.8 + rng.normal(size=200)
    out["continuous"] = (labels, a, a + rng.normal(scale=0.7, size=200))
    labels = rng.integers(0, 2, 150)
    heavy = np.round(labels * 0.6 + rng.normal(size=150))  # a handful of distinct values
    out["heavy_ties"] = (labels, heavy, rng.integers(0, 3, 150) + labels)
    tiny = np.array([1, 1, 0, 0, 0])
    out["tiny_2_vs_3"] = (tiny, np.array([0.9, 0.4, 0.5, 0.4, 0.1]), np.array([0.3, 0.8, 0.2, 0.6, 0.1]))
    labels = np.r_[np.ones(7, int), np.zeros(60, int)]
    out["unbalanced"] = (labels, labels * 0.5 + rng.normal(size=67), rng.normal(size=67) + labels * 1.5)
    return out


@pytest.mark.parametrize("name", list(datasets()))
def test_matches_direct_structural_components(name: str) -> None:
    labels, a, b = datasets()[name]
    aucs, cov = delong_covariance(labels, np.vstack([a, b]))
    ref_aucs, ref_cov = direct_covariance(labels, np.vstack([a, b]))
    np.testing.assert_allclose(aucs, ref_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(datasets()))
def test_matches_mlstatkit_interval_and_paired_test(name: str) -> None:
    labels, a, b = datasets()[name]
    z, p, ci_a, ci_b, auc_a, auc_b, info = Delong_test(labels, a, b, alpha=0.95)
    assert info["method"] == "delong"  # no bootstrap fallback: a like-for-like comparison
    ours_a, ours_b = delong_ci(labels, a), delong_ci(labels, b)
    test = delong_paired_test(labels, a, b)
    assert ours_a.auc == pytest.approx(auc_a, abs=1e-12)
    assert ours_b.auc == pytest.approx(auc_b, abs=1e-12)
    assert (ours_a.ci_low, ours_a.ci_high) == pytest.approx(ci_a, abs=1e-10)
    assert (ours_b.ci_low, ours_b.ci_high) == pytest.approx(ci_b, abs=1e-10)
    assert test.z == pytest.approx(z, rel=1e-9)  # both signed as AUC(b) - AUC(a)
    assert test.p_value == pytest.approx(p, rel=1e-9)


@pytest.mark.parametrize("name", list(datasets()))
def test_auc_is_mann_whitney_u_over_n1_n0(name: str) -> None:
    labels, a, _ = datasets()[name]
    u = mannwhitneyu(a[labels == 1], a[labels == 0], alternative="two-sided").statistic
    n1, n0 = int(labels.sum()), int((labels == 0).sum())
    assert delong_ci(labels, a).auc == pytest.approx(u / (n1 * n0), abs=1e-12)


def test_interval_is_clipped_to_unit_range_and_ordered() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.35, 0.05])
    estimate = delong_ci(labels, scores)
    assert 0.0 <= estimate.ci_low <= estimate.auc <= estimate.ci_high <= 1.0
    assert estimate.ci_high == 1.0  # AUC 11/12 with a wide interval is clipped at 1


def test_one_class_is_an_error_and_a_single_subject_class_has_no_variance() -> None:
    with pytest.raises(OneClassError, match="AUC undefined"):
        delong_ci(np.array([1, 1, 1]), np.array([0.1, 0.5, 0.9]))
    with pytest.raises(OneClassError, match="no subjects"):
        delong_ci(np.array([], dtype=int), np.array([]))
    estimate = delong_ci(np.array([1, 0, 0]), np.array([0.9, 0.5, 0.1]))
    assert estimate.auc == 1.0
    assert math.isnan(estimate.variance) and math.isnan(estimate.ci_low)


def test_paired_test_of_identical_scores_finds_no_difference() -> None:
    labels, a, _ = datasets()["continuous"]
    test = delong_paired_test(labels, a, a)
    assert test.difference == 0.0 and test.p_value == 1.0
