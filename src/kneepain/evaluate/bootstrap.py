"""Percentile bootstrap confidence interval of the AUC, resampling subjects, from an explicit seed.

Hand-written rather than ``scipy.stats.bootstrap`` because a resample of a small subgroup can
contain one class only: its AUC is undefined, and we drop it and report how many were used,
where scipy's interval would turn NaN. The AUC of each resample is the Mann-Whitney statistic
from midranks, vectorised over a block of resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

_BLOCK = 256  # resamples ranked at once: bounds memory at 256 x n floats


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile interval and how it was drawn (``n_used`` excludes one-class resamples)."""

    low: float
    high: float
    level: float
    n_resamples: int
    n_used: int
    seed: int


def resampled_aucs(labels: np.ndarray, scores: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """AUCs of ``n_resamples`` subject resamples (with replacement); NaN where a resample has one class.

    The same seed gives the same resamples and the same numbers, byte for byte.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.size != scores.size:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    rng = np.random.default_rng(seed)
    size = labels.size
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _BLOCK):
        count = min(_BLOCK, n_resamples - start)
        index = rng.integers(0, size, size=(count, size))
        y = labels[index]
        ranks = rankdata(scores[index], axis=1)
        m = y.sum(axis=1).astype(np.float64)
        n = size - m
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = ((ranks * y).sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
        auc[(m == 0) | (n == 0)] = np.nan
        out[start : start + count] = auc
    return out


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, n_resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> BootstrapInterval:
    """Percentile ``level`` interval of the AUC over ``n_resamples`` subject resamples."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    aucs = resampled_aucs(labels, scores, n_resamples, seed)
    used = aucs[np.isfinite(aucs)]
    if used.size == 0:
        return BootstrapInterval(math.nan, math.nan, level, n_resamples, 0, seed)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(used, [tail, 100.0 - tail])
    return BootstrapInterval(float(low), float(high), level, n_resamples, int(used.size), seed)
