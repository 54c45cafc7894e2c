"""Threshold-free and threshold metrics of the painful-side prediction.

The positive class is label 1 (right knee painful) and the score is ``prob_right``, so
sensitivity is the fraction of right-painful subjects called right, specificity the fraction
of left-painful subjects called left.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score, roc_curve

from kneepain.evaluate.bootstrap import bootstrap_auc_ci
from kneepain.evaluate.delong import delong_ci


@dataclass(frozen=True)
class ThresholdMetrics:
    """Accuracy, sensitivity and specificity when ``prob_right >= threshold`` means right."""

    threshold: float
    accuracy: float
    sensitivity: float
    specificity: float
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn)."""
    return float(roc_auc_score(labels, scores))


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds of the full ROC curve."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr, thresholds


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (lowest if tied)."""
    fpr, tpr, thresholds = roc_points(labels, scores)
    finite = np.isfinite(thresholds)  # scikit-learn's first threshold is +inf (nothing called right)
    j = (tpr - fpr)[finite]
    return float(thresholds[finite][int(np.argmax(j))])


def metrics_at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> ThresholdMetrics:
    """Confusion counts and rates when subjects with ``score >= threshold`` are called right-painful."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    total = tn + fp + fn + tp
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    return ThresholdMetrics(float(threshold), (tp + tn) / total, sensitivity, specificity, tp, fp, tn, fn)


def brier_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared difference between ``prob_right`` and the label (lower is better)."""
    return float(brier_score_loss(labels, scores))


def reliability_table(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of ``prob_right``: count, mean predicted probability, observed fraction right.

    Hand-written because scikit-learn's ``calibration_curve`` does not return the bin counts a
    reader needs to judge each point; bins are [low, high) except the last, which includes 1.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        rows.append(
            {
                "bin_low": edges[b],
                "bin_high": edges[b + 1],
                "n": count,
                "mean_predicted": float(scores[inside].mean()) if count else np.nan,
                "observed_fraction_right": float(labels[inside].mean()) if count else np.nan,
            }
        )
    return pd.DataFrame(rows)


def summarize(
    labels: np.ndarray, scores: np.ndarray, n_bootstrap: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, object]:
    """Every headline number of one run: AUC with DeLong and bootstrap intervals, Youden metrics, Brier."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    delong = delong_ci(labels, scores, level)
    boot = bootstrap_auc_ci(labels, scores, n_bootstrap, seed, level)
    threshold = youden_threshold(labels, scores)
    return {
        "n": int(labels.size),
        "n_right_painful": int(labels.sum()),
        "n_left_painful": int(labels.size - labels.sum()),
        "positive_class": "label 1: right knee painful; score: prob_right",
        "level": level,
        "auc": roc_auc(labels, scores),
        "auc_variance_delong": delong.variance,
        "auc_ci_delong": [delong.ci_low, delong.ci_high],
        "auc_ci_bootstrap": [boot.low, boot.high],
        "bootstrap": {"n_resamples": boot.n_resamples, "n_used": boot.n_used, "seed": boot.seed},
        "youden": asdict(metrics_at_threshold(labels, scores, threshold)),
        "at_0_5": asdict(metrics_at_threshold(labels, scores, 0.5)),
        "brier": brier_score(labels, scores),
    }
