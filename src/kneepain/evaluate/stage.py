"""`kneepain evaluate`: every evaluation file of one run, written into ``RUN/evaluation/`` at once.

The folder is assembled under a temporary name and swapped in whole (``fileio.atomic_dir``), so
a failed evaluation leaves the previous one intact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kneepain.contracts import PREDICTIONS_TABLE, WorkPaths
from kneepain.evaluate.balance import FOLD_BALANCE_TABLE, fold_balance
from kneepain.evaluate.cohort_size import cohort_size_reference, plot_cohort_size, read_learning_curve
from kneepain.evaluate.compare import compare_runs, comparison_table
from kneepain.evaluate.delong import OneClassError, delong_ci
from kneepain.evaluate.figures import RocCurve, plot_calibration, plot_roc
from kneepain.evaluate.inputs import EvaluationInputError, RunData, load_run
from kneepain.evaluate.metrics import brier_score, reliability_table, roc_points, summarize
from kneepain.evaluate.provenance import software_versions, synthetic_evidence
from kneepain.evaluate.subgroups import subgroup_table
from kneepain.evaluate.tables import comparison_markdown, subgroup_markdown
from kneepain.fileio import atomic_dir, write_csv, write_json, write_text

EVALUATION_DIR = "evaluation"


@dataclass(frozen=True)
class EvaluateOptions:
    """What `kneepain evaluate` was asked to do."""

    compare: tuple[Path, ...] = ()
    n_bootstrap: int = 2000
    seed: int = 0
    level: float = 0.95
    allow_missing: bool = False


def run_label(run: RunData) -> str:
    """Legend name of a run: its folder name, and its cohort model when run.json records one.

    Short on purpose: the configuration (a dict in run.json) goes in the report's caption and
    configuration table, never in a legend, where it would widen the figure.
    """
    model = run.info.get("model")
    return f"{run.name} (Model {model})" if isinstance(model, str) and model else run.name


def _roc_curve(run: RunData, level: float) -> RocCurve:
    labels = run.predictions["label"].to_numpy()
    scores = run.predictions["prob_right"].to_numpy()
    fpr, tpr, _ = roc_points(labels, scores)
    estimate = delong_ci(labels, scores, level)
    return RocCurve(run_label(run), fpr, tpr, estimate.auc, estimate.ci_low, estimate.ci_high, len(labels))


def json_safe(obj: Any) -> Any:
    """NaN and infinity become null, so metrics.json is strict JSON that any reader accepts."""
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(value) for value in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):  # numpy scalars
        return json_safe(obj.item())
    return obj


def evaluate_run(run_dir: str | Path, options: EvaluateOptions | None = None) -> dict[str, Any]:
    """Compute and write ``RUN/evaluation/``; returns the contents of its ``metrics.json``."""
    options = options or EvaluateOptions()
    run = load_run(run_dir, allow_missing=options.allow_missing)
    others = [load_run(path, allow_missing=options.allow_missing) for path in options.compare]
    labels = run.predictions["label"].to_numpy()
    scores = run.predictions["prob_right"].to_numpy()
    try:
        summary = summarize(labels, scores, options.n_bootstrap, options.seed, options.level)
    except OneClassError as error:
        raise EvaluationInputError(f"{run.run_dir / PREDICTIONS_TABLE}: {error}") from error
    cohort_path = WorkPaths(run.work).cohort_table
    try:
        subgroups = subgroup_table(run.predictions, options.level, source=str(cohort_path))
    except ValueError as error:  # a covariate that is not what the cohort contract says
        raise EvaluationInputError(str(error)) from error

    metrics: dict[str, Any] = {
        "run": run.name,
        "run_dir": str(run.run_dir.resolve()),
        "work": str(run.work),
        "model": run.info.get("model"),
        **summary,
    }
    evidence = synthetic_evidence(run.info, run.work)
    metrics["synthetic"] = bool(evidence)
    metrics["synthetic_evidence"] = evidence
    metrics["excluded"] = run.excluded.to_dict(orient="records")
    curve = read_learning_curve()
    if curve is not None:
        metrics["cohort_size_reference"] = cohort_size_reference(curve, len(labels), summary["auc"])
    comparisons = comparison_table([compare_runs(run, other) for other in others])
    calibration = reliability_table(labels, scores)
    metrics["comparisons"] = comparisons.to_dict(orient="records")
    metrics["software"] = software_versions()
    metrics["options"] = {
        "compare": [str(p) for p in options.compare],
        "n_bootstrap": options.n_bootstrap,
        "seed": options.seed,
        "level": options.level,
        "allow_missing": options.allow_missing,
    }

    target = run.run_dir / EVALUATION_DIR
    with atomic_dir(target) as tmp:
        curves = [_roc_curve(run, options.level)] + [_roc_curve(other, options.level) for other in others]
        plot_roc(curves, tmp / "roc", title="ROC, out-of-fold predictions")
        plot_calibration(calibration, brier_score(labels, scores), tmp / "calibration", title="Calibration")
        if curve is not None:
            plot_cohort_size(curve, len(labels), summary["auc"], tmp / "cohort_size")
        balance = fold_balance(run.predictions, run.run_dir)
        if balance is not None:
            write_csv(tmp / FOLD_BALANCE_TABLE, balance)
        write_csv(tmp / "calibration.csv", calibration)
        write_csv(tmp / "subgroups.csv", subgroups)
        write_text(tmp / "subgroups.md", subgroup_markdown(subgroups, f"Subgroups (Figure 4C): {run.name}"))
        write_csv(tmp / "comparisons.csv", comparisons)
        write_text(
            tmp / "comparisons.md", comparison_markdown(comparisons, f"Paired comparisons: {run.name}")
        )
        write_csv(tmp / "excluded.csv", run.excluded)
        write_json(tmp / "metrics.json", json_safe(metrics))
    return json_safe(metrics)
