"""ROC figures in the style of the paper's Figure 4A/B, and the calibration plot (PNG and SVG).

Files are written through ``kneepain.fileio`` and carry no date, so the same predictions give
the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.evaluate.tables import fmt
from kneepain.fileio import atomic_path


@dataclass(frozen=True)
class RocCurve:
    """One curve and the legend numbers drawn beside it."""

    label: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    ci_low: float
    ci_high: float
    n: int


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "kneepain"  # stable element ids in the SVG
    return plt


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    written = []
    for ext in formats:
        target = stem.with_suffix(f".{ext}")
        with atomic_path(target) as tmp:
            metadata = {"Date": None} if ext == "svg" else {"Software": None}
            fig.savefig(tmp, format=ext, dpi=150, metadata=metadata, bbox_inches="tight")
        written.append(target)
    return written


def plot_roc(
    curves: list[RocCurve], stem: Path, title: str, formats: tuple[str, ...] = ("png", "svg")
) -> list[Path]:
    """ROC curves with AUC, 95% CI and n in the legend; writes ``stem.png`` and ``stem.svg``."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for curve in curves:
        ci = f"95% CI {fmt(curve.ci_low)}–{fmt(curve.ci_high)}"
        legend = f"{curve.label}: AUC {fmt(curve.auc)} ({ci}), n={curve.n}"
        ax.plot(curve.fpr, curve.tpr, linewidth=2, label=legend)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="False positive rate (1 − specificity)",
        ylabel="True positive rate (sensitivity)",
        title=title,
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    try:
        return _save(fig, stem, formats)
    finally:
        plt.close(fig)


def plot_calibration(
    table: pd.DataFrame, brier: float, stem: Path, title: str, formats: tuple[str, ...] = ("png",)
) -> list[Path]:
    """Reliability curve (observed fraction right vs mean prob_right per bin) over a count histogram."""
    plt = _figure()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.0, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    filled = table[table["n"] > 0]
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    ax.plot(
        filled["mean_predicted"],
        filled["observed_fraction_right"],
        marker="o",
        linewidth=2,
        label=f"model (Brier {fmt(brier)})",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="Observed fraction right knee painful", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    widths = (table["bin_high"] - table["bin_low"]).to_numpy()
    hist.bar(table["bin_low"], table["n"], width=widths, align="edge", color="0.5", edgecolor="white")
    hist.set(xlabel="Predicted probability right knee painful (prob_right)", ylabel="Subjects")
    try:
        return _save(fig, stem, formats)
    finally:
        plt.close(fig)
