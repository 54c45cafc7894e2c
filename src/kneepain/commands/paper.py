"""`kneepain paper WORK`: every experiment of the paper as run folders, and one document of its results."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `paper` command."""

    @app.command("paper")
    def paper(
        work: Path = typer.Argument(..., help="Work folder with ingest/ and a registered preprocess/ cache."),
        preset: str = typer.Option(
            "small", "--preset", help="small (CPU, hours) | paper (the published network)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Folder of paper.html and paper.json (default WORK/paper)."
        ),
        fast: bool = typer.Option(
            False, "--fast", help="Smoke test: tiny preset, 2 folds, 2 epochs, 200 resamples."
        ),
        review_db: Path | None = typer.Option(
            None,
            "--review-db",
            help="Review database of the review run (kneepain review): Figure 3I, agreement.",
        ),
        folds: int = typer.Option(10, "--folds", min=2, help="Cross-validation folds (the paper: 10)."),
        seed: int = typer.Option(0, "--seed", help="Seed of folds, splits, training and bootstrap."),
        budget_minutes: float = typer.Option(
            90.0,
            "--budget-minutes",
            help="Optional experiments run only when the estimate stays within this.",
        ),
        include: list[str] = typer.Option(
            [],
            "--with",
            help="Run an optional experiment whatever the budget: architectures, unregistered, all.",
        ),
        epochs: int | None = typer.Option(None, "--epochs", min=1, help="Override the preset's epochs."),
        device: str | None = typer.Option(
            None, "--device", help="auto | cpu | cuda (default: the preset's)."
        ),
        precision: str | None = typer.Option(
            None, "--precision", help="Training precision (default: the preset's)."
        ),
    ) -> None:
        """Run the paper's experiments (resumable; estimate printed first) and write its results document."""
        from kneepain.console import console, fail, safe
        from kneepain.paper import PaperError, PaperOptions, run_paper

        options = PaperOptions(
            work=work,
            preset=preset,
            out=out,
            fast=fast,
            review_db=review_db,
            folds=folds,
            seed=seed,
            budget_minutes=budget_minutes,
            include=tuple(include),
            epochs=epochs,
            device=device,
            precision=precision,
        )
        try:
            document = run_paper(options)
        except PaperError as error:
            fail("paper", error)
            raise typer.Exit(code=2) from error
        console.print(f"[bold]paper[/bold]: document {safe(document)}")
