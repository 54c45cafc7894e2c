"""`kneepain synth`: write a synthetic OAI-format cohort with a truth folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the `synth` command."""

    @app.command("synth")
    def synth(
        out: Path = typer.Option(..., help="Folder to write (images/, clinical/, truth/)."),
        subjects: int = typer.Option(100, help="Number of participants."),
        seed: int = typer.Option(1, help="Seed: the same seed gives byte-identical files."),
        workers: int = typer.Option(0, help="Processes (0: all cores)."),
        proportions: str = typer.Option(
            "training", help="'training' (mostly unilateral pain) or 'paper' (the paper's proportions)."
        ),
        phantom: str = typer.Option(
            "default",
            help="'default' or 'challenge' (fat-suppressed contrast, large effusions, bright vessels, "
            "the PCL off the knee's middle, adult sizes and tibial slopes: docs/synth.md).",
        ),
    ) -> None:
        """Synthesise knee MRI (DICOM), clinical files and truth for N participants."""
        from kneepain.synth import generate_cohort

        try:
            generate_cohort(
                out, subjects, seed, workers=workers or None, proportions=proportions, phantom=phantom
            )
        except (ValueError, FileExistsError) as error:
            raise typer.BadParameter(str(error)) from error
