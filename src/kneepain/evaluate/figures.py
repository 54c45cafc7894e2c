"""ROC figures in the style of the paper's Figure 4A/B, and the calibration plot (PNG and SVG).

Files are written through ``kneepain.fileio`` and carry no date, so the same predictions give
the same bytes. Each figure is laid out by matplotlib's constrained layout on a fixed canvas (no
``bbox_inches="tight"``, which lets a long legend widen the image and squeeze the plot), and a
``<stem>.layout.json`` beside it records the share of the canvas its plotting area fills, so the
report and its tests can check that the plot, not white space, fills the figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.evaluate.tables import fmt
from kneepain.fileio import atomic_path, write_json

FONT_SIZE = 10  # points; at 150 dpi still about 11 px on a phone showing the figure 380 px wide
LAYOUT_SUFFIX = ".layout.json"


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
    plt.rcParams["font.size"] = FONT_SIZE
    return plt


def plot_layout(fig) -> dict[str, float]:
    """Canvas size (pixels at the PNG's dpi) and the horizontal share the axes' union fills."""
    fig.canvas.draw()  # constrained layout places the axes at draw time
    boxes = [ax.get_position() for ax in fig.axes]
    left, right = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    bottom, top = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    width, height = fig.get_size_inches() * 150
    return {
        "width_px": round(float(width)),
        "height_px": round(float(height)),
        "plot_width_fraction": round(float(right - left), 3),
        "plot_height_fraction": round(float(top - bottom), 3),
    }


def layout_path(image: Path) -> Path:
    """Where the layout record of a figure file lies (``roc.png`` -> ``roc.layout.json``)."""
    return image.with_name(image.stem + LAYOUT_SUFFIX)


def _save(fig, stem: Path, formats: tuple[str, ...]) -> list[Path]:
    written = []
    for ext in formats:
        target = stem.with_suffix(f".{ext}")
        with atomic_path(target) as tmp:
            metadata = {"Date": None} if ext == "svg" else {"Software": None}
            fig.savefig(tmp, format=ext, dpi=150, metadata=metadata)
        written.append(target)
    write_json(layout_path(stem.with_suffix(".png")), plot_layout(fig))
    return written


def plot_roc(
    curves: list[RocCurve], stem: Path, title: str, formats: tuple[str, ...] = ("png", "svg")
) -> list[Path]:
    """ROC curves with AUC, 95% CI and n in the legend; writes ``stem.png`` and ``stem.svg``.

    Legend entries are ``label: AUC 0.794 (0.712–0.876), n = 150``: keep labels short (a run's
    name); its configuration belongs in the caption.
    """
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.8, 4.95 + 0.25 * len(curves)), layout="constrained")  # legend below
    fig.get_layout_engine().set(h_pad=0.08)  # room above the title: aspect=equal otherwise clips it
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for curve in curves:
        ci = f"{fmt(curve.ci_low)}–{fmt(curve.ci_high)}"
        legend = f"{curve.label}: AUC {fmt(curve.auc)} ({ci}), n = {curve.n}"
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
    fig.legend(loc="outside lower center", fontsize=FONT_SIZE - 1, frameon=False)  # below, off the curves
    try:
        return _save(fig, stem, formats)
    finally:
        plt.close(fig)


def plot_calibration(
    table: pd.DataFrame, brier: float, stem: Path, title: str, formats: tuple[str, ...] = ("png", "svg")
) -> list[Path]:
    """Reliability curve (observed fraction right vs mean prob_right per bin) over a count histogram."""
    plt = _figure()
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(4.8, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, layout="constrained"
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
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="Observed share right painful", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=FONT_SIZE - 1)
    widths = (table["bin_high"] - table["bin_low"]).to_numpy()
    hist.bar(table["bin_low"], table["n"], width=widths, align="edge", color="0.5", edgecolor="white")
    hist.set(xlabel="Predicted probability right knee painful", ylabel="Participants")
    try:
        return _save(fig, stem, formats)
    finally:
        plt.close(fig)
