"""DeLong's variance of the AUC, its confidence interval, and the paired test of two AUCs.

Hand-written because no well-kept library provides it (scikit-learn and scipy compute the AUC
but not its DeLong variance). This is the fast O(n log n) formulation of Sun & Xu (IEEE Signal
Processing Letters, 2014): the structural components of DeLong et al. (Biometrics, 1988) are
obtained from midranks (scipy's ``rankdata``) instead of the O(n0 * n1) pairwise comparison,
which handles ties by counting them as one half, exactly as the Mann-Whitney U statistic does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri
from scipy.stats import norm, rankdata


class OneClassError(ValueError):
    """The AUC is undefined: the labels contain only one class."""


@dataclass(frozen=True)
class AucEstimate:
    """An AUC with its DeLong variance and normal-approximation confidence interval.

    ``variance`` and the interval are NaN when a class has fewer than two subjects (the
    sample variance of its structural components is undefined).
    """

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    level: float
    n_positive: int
    n_negative: int


@dataclass(frozen=True)
class PairedTest:
    """DeLong's test of two correlated AUCs measured on the same subjects (b minus a)."""

    auc_a: float
    auc_b: float
    difference: float
    standard_error: float
    z: float
    p_value: float
    n_positive: int
    n_negative: int


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if scores.shape[1] != labels.size:
        raise ValueError(f"{labels.size} labels but {scores.shape[1]} scores")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or infinity)")
    if labels.size == 0:
        raise OneClassError("AUC undefined: no subjects")
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise OneClassError(f"AUC undefined: all {labels.size} subjects have label {int(labels[0])}")
    return labels.astype(bool), scores


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score vectors on the same subjects and their k x k DeLong covariance.

    ``labels``: (n,) of 0/1 (1 = positive); ``scores``: (n,) or (k, n), higher = more positive.
    Returns ``(aucs, covariance)``; the covariance is NaN where a class has < 2 subjects.
    """
    positive, scores = _check(labels, scores)
    m, n = int(positive.sum()), int((~positive).sum())
    ranks_all = rankdata(scores, axis=1)  # midranks over all subjects
    ranks_pos = rankdata(scores[:, positive], axis=1)  # midranks within positives
    ranks_neg = rankdata(scores[:, ~positive], axis=1)  # midranks within negatives
    aucs = (ranks_all[:, positive].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    # Structural components: for each positive, the fraction of negatives it outranks (ties 1/2);
    # for each negative, the fraction of positives that outrank it.
    v_pos = (ranks_all[:, positive] - ranks_pos) / n
    v_neg = 1.0 - (ranks_all[:, ~positive] - ranks_neg) / m
    k = scores.shape[0]
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    covariance = np.atleast_2d(np.cov(v_pos)) / m + np.atleast_2d(np.cov(v_neg)) / n
    return aucs, covariance


def normal_interval(estimate: float, variance: float, level: float) -> tuple[float, float]:
    """Estimate +- z * sqrt(variance), clipped to [0, 1] as an AUC must be (pROC does the same)."""
    if not math.isfinite(variance):
        return math.nan, math.nan
    half = float(ndtri(0.5 + level / 2.0)) * math.sqrt(max(variance, 0.0))
    return max(0.0, estimate - half), min(1.0, estimate + half)


def delong_ci(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> AucEstimate:
    """AUC with DeLong's variance and a ``level`` confidence interval (normal approximation)."""
    aucs, covariance = delong_covariance(labels, scores)
    auc, variance = float(aucs[0]), float(covariance[0, 0])
    low, high = normal_interval(auc, variance, level)
    positives = int(np.asarray(labels).sum())
    return AucEstimate(auc, variance, low, high, level, positives, int(np.asarray(labels).size) - positives)


def delong_paired_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> PairedTest:
    """Two-sided DeLong test of AUC(b) - AUC(a) for two score vectors on the same subjects.

    When the variance of the difference is zero (e.g. identical scores) the test is undefined
    unless the difference is zero too, where p = 1.
    """
    aucs, cov = delong_covariance(labels, np.vstack([scores_a, scores_b]))
    difference = float(aucs[1] - aucs[0])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if math.isfinite(variance) and variance > 0.0:
        se = math.sqrt(variance)
        z = difference / se
        p_value = float(2.0 * norm.sf(abs(z)))
    elif math.isfinite(variance) and difference == 0.0:
        se, z, p_value = 0.0, 0.0, 1.0
    else:
        se, z, p_value = math.sqrt(variance) if variance >= 0 else math.nan, math.nan, math.nan
    positives = int(np.asarray(labels).sum())
    return PairedTest(
        float(aucs[0]),
        float(aucs[1]),
        difference,
        se,
        z,
        p_value,
        positives,
        np.asarray(labels).size - positives,
    )
