"""`kneepain evaluate` (AUC, ROC, subgroups, comparisons, calibration) and `kneepain report` (HTML)."""

from __future__ import annotations

import math
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `evaluate` and `report` commands."""

    @app.command("evaluate")
    def evaluate(
        run: Path = typer.Argument(
            ..., help="Run folder WORK/runs/<run> holding predictions.csv and run.json."
        ),
        compare: list[Path] = typer.Option(
            [], "--compare", help="Another run on the same subjects for a paired DeLong test (repeatable)."
        ),
        bootstrap: int = typer.Option(2000, "--bootstrap", min=1, help="Bootstrap resamples of subjects."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
        allow_missing: bool = typer.Option(
            False, "--allow-missing", help="Evaluate although cohort members lack predictions (recorded)."
        ),
    ) -> None:
        """Write RUN/evaluation/: metrics.json, roc.png/.svg, subgroups, comparisons, calibration."""
        from kneepain.console import fail, stage
        from kneepain.evaluate.inputs import EvaluationInputError
        from kneepain.evaluate.stage import EvaluateOptions, evaluate_run
        from kneepain.evaluate.tables import fmt_auc

        options = EvaluateOptions(tuple(compare), bootstrap, seed, allow_missing=allow_missing)
        try:
            with stage("evaluate") as info:
                metrics = evaluate_run(run, options)
                low, high = (math.nan if v is None else v for v in metrics["auc_ci_delong"])
                info["subjects"] = metrics["n"]
                info["AUC (DeLong 95% CI)"] = fmt_auc(metrics["auc"], low, high)
                info["comparisons"] = len(metrics["comparisons"])
                info["excluded"] = len(metrics["excluded"])
        except EvaluationInputError as error:
            fail("evaluate", error)
            raise typer.Exit(code=2) from error

    @app.command("report")
    def report(
        run: Path = typer.Argument(..., help="Run folder WORK/runs/<run> (evaluate it first)."),
        out: Path | None = typer.Option(None, "--out", help="HTML file to write (default RUN/report.html)."),
    ) -> None:
        """Write one self-contained HTML report (figures embedded) of a run."""
        from kneepain.console import fail, stage
        from kneepain.contracts import RunFolderError
        from kneepain.report.html import build_report

        if not run.is_dir():
            fail("report", f"{run}: run folder not found")
            raise typer.Exit(code=2)
        try:
            with stage("report") as info:
                target = build_report(run, out)
                info["file"] = str(target)
        except RunFolderError as error:
            fail("report", error)
            raise typer.Exit(code=2) from error
