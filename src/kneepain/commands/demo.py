"""`kneepain demo`: the whole chain on a synthetic cohort, one command."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `demo` command."""

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo-run"), help="Folder for the cohort and every stage's output."),
        subjects: int = typer.Option(0, help="Participants to synthesise (0: 200, or 40 with --fast)."),
        seed: int = typer.Option(
            11,
            help="Seed for the cohort, folds and training. The default, 11, is an evaluation cohort: "
            "nothing was chosen on it (docs/experiments.md lists the development seeds).",
        ),
        fast: bool = typer.Option(False, help="A minute-scale run: few subjects, 3 folds, few epochs."),
        folds: int = typer.Option(
            0, help="Cross-validation folds (0: 5, or 3 with --fast; `kneepain cv` defaults to 10)."
        ),
        workers: int = typer.Option(0, help="Processes for synth and preprocess (0: all cores)."),
    ) -> None:
        """Synthesise a cohort, ingest, preprocess, cross-validate, evaluate, compute CAMs, report."""
        from kneepain.demo import DemoError, DemoOptions, run_demo

        options = DemoOptions(
            out=out,
            subjects=subjects or (40 if fast else 200),
            seed=seed,
            fast=fast,
            folds=folds or (3 if fast else 5),
            workers=workers or None,
        )
        try:
            run_demo(options)
        except DemoError as error:
            typer.echo(f"demo stopped: {error}", err=True)
            raise typer.Exit(2) from error
