"""How hard the synthetic task is: the oracle AUC and a shortcut's AUC, measured on the cohort."""

from __future__ import annotations

import numpy as np

ORACLE_TARGET = (0.85, 0.95)
SHORTCUT_MAX = 0.65


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for ``labels`` (1 = right painful); None when one class is absent."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=int)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=float)))


def oracle_auc(labels: np.ndarray, propensity: np.ndarray) -> float | None:
    """AUC of the true lesion-burden difference (right minus left): the best any model can do."""
    return auc(labels, propensity)


def shortcut_auc(labels: np.ndarray, mean_right: np.ndarray, mean_left: np.ndarray) -> float | None:
    """AUC of the mean pixel intensity difference between the knees: a shortcut that should fail."""
    return auc(labels, np.asarray(mean_right, dtype=float) - np.asarray(mean_left, dtype=float))


def strength(value: float | None) -> float | None:
    """Distance-free strength of an AUC as a classifier in either direction: max(auc, 1 - auc)."""
    return None if value is None else max(value, 1.0 - value)
