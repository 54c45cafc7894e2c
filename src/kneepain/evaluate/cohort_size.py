"""This run beside the project's learning curve: what cohorts of its size gave on synthetic data.

A researcher reading one cross-validated AUC needs to know how far a second cohort of the same
size could land from it, and whether more participants would help. The project measured that on
fresh synthetic cohorts (``benchmarks/learning_curve.py``, several seeds per size, seeds that chose
nothing); ``learning_curve.json`` in this package is its summary, written by that script with
``--publish``. The figure puts this run's pooled AUC at its number of evaluated participants over
the curve's mean and between-cohort spread. The curve describes the generator, not patients: it
says how much the estimate moves with cohort size, not what AUC real knees give.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

CURVE_FILE = "learning_curve.json"


def read_learning_curve() -> dict[str, Any] | None:
    """The packaged learning-curve summary, or None when this build carries none (or a broken one)."""
    try:
        text = resources.files("kneepain.evaluate").joinpath(CURVE_FILE).read_text(encoding="utf-8")
        curve = json.loads(text)
    except (OSError, ValueError):
        return None
    sizes = [s for s in curve.get("sizes", []) if s.get("auc_mean") is not None]
    return {**curve, "sizes": sizes} if sizes else None


def nearest_size(curve: dict[str, Any], n_evaluated: int) -> dict[str, Any]:
    """The curve's size whose mean number of evaluated participants is closest to ``n_evaluated``."""
    return min(curve["sizes"], key=lambda s: abs(s["n_evaluated_mean"] - n_evaluated))


def cohort_size_reference(curve: dict[str, Any], n_evaluated: int, auc: float) -> dict[str, Any]:
    """What metrics.json keeps: the nearest size's figures beside this run's, and the report's caption."""
    size = nearest_size(curve, n_evaluated)
    reference = {
        "source": curve.get("source", "benchmarks/learning_curve.py"),
        "synthetic": True,
        "run_n_evaluated": int(n_evaluated),
        "run_auc": float(auc),
        "preset": curve.get("plan", {}).get("preset", "small"),
        "folds": curve.get("plan", {}).get("folds", 5),
        "cohort_size": size["size"],
        "n_evaluated_mean": size["n_evaluated_mean"],
        "seeds": len(size["seeds_done"]),
        "auc_mean": size["auc_mean"],
        "auc_sd_between_seeds": size["auc_sd_between_seeds"],
        "gap_mean": size["gap_mean"],
        "gap_sd_between_seeds": size["gap_sd_between_seeds"],
    }
    return reference | {"caption": cohort_size_caption(reference)}


def cohort_size_caption(reference: dict[str, Any]) -> str:
    """The report's caption under the figure."""
    preset, folds = reference["preset"], reference["folds"]
    sd = reference["auc_sd_between_seeds"]
    spread = f" ± {sd:.3f} between cohorts" if sd is not None else " (one cohort: no spread yet)"
    auc = f"{reference['auc_mean']:.3f}{spread}"
    return (
        f"This run's pooled AUC at its {reference['run_n_evaluated']} evaluated participants (red), over "
        f"the project's learning curve on fresh synthetic cohorts ({preset} preset, {folds} folds; "
        "squares: mean, bars: SD between cohorts; dashed: the generator's oracle). "
        f"{reference['seeds']} synthetic cohorts of {reference['cohort_size']} participants "
        f"(about {reference['n_evaluated_mean']:.0f} evaluated) gave AUC {auc}, "
        f"{reference['gap_mean']:.3f} below the oracle. It describes the generator, not patients: read "
        "it for how much an AUC at this size varies between cohorts, not for the AUC real knees give."
    )


def plot_cohort_size(curve: dict[str, Any], n_evaluated: int, auc: float, stem: Path) -> list[Path]:
    """The curve's mean AUC and oracle against evaluated participants, this run as one point."""
    from kneepain.evaluate.figures import FONT_SIZE, _figure, _save

    plt = _figure()
    sizes = curve["sizes"]
    x = [s["n_evaluated_mean"] for s in sizes]
    fig, ax = plt.subplots(figsize=(4.8, 4.2), layout="constrained")
    ax.errorbar(
        x, [s["auc_mean"] for s in sizes], yerr=[s["auc_sd_between_seeds"] or 0.0 for s in sizes],
        fmt="s-", color="C0", lw=2, capsize=4, label="synthetic cohorts: mean AUC, SD between cohorts",
    )  # fmt: skip
    ax.plot(x, [s["oracle_mean"] for s in sizes], "k--", lw=1.2, label="generator's oracle (mean)")
    ax.plot([n_evaluated], [auc], "o", color="C3", ms=8, label=f"this run: AUC {auc:.3f}, n = {n_evaluated}")
    ax.set(
        xlabel="participants evaluated (out of fold)",
        ylabel="pooled out-of-fold AUC",
        title="This run against the synthetic learning curve",
        ylim=(0.4, 1.0),
    )
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=FONT_SIZE - 2, frameon=False)
    try:
        return _save(fig, stem, ("png", "svg"))
    finally:
        plt.close(fig)
