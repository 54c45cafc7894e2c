"""`kneepain ingest`: an OAI-format image tree and clinical files -> series, cohort, funnel, Table 1."""

from __future__ import annotations

from pathlib import Path

import typer

from kneepain.commands.limits import MAX_SERIES_MB, MAX_SLICE_PIXELS


def register(app: typer.Typer) -> None:
    """Add the `ingest` command."""

    @app.command("ingest")
    def ingest(
        images: Path = typer.Option(..., help="Image root: the visit folder (00m) is found at any depth."),
        clinical: Path = typer.Option(..., help="Clinical root: files are found recursively, any case."),
        out: Path = typer.Option(..., help="Work folder; results go to OUT/ingest/ (replaced whole)."),
        index: Path | None = typer.Option(
            None, help="Index CSV (contents.csv); default: found or headers read."
        ),
        pain_right: str = typer.Option("P01KPNREV", help="Frequent pain variable, right knee."),
        pain_left: str = typer.Option("P01KPNLEV", help="Frequent pain variable, left knee."),
        womac_diff: float = typer.Option(3.0, help="Model B: least WOMAC pain difference between knees."),
        visit: str = typer.Option("00m", help="Visit folder name."),
        student: bool = typer.Option(False, help="Student's t-test (the paper's) instead of Welch's."),
        workers: int = typer.Option(0, help="Processes for header reading (0: all cores)."),
        max_slice_pixels: int | None = MAX_SLICE_PIXELS,
        max_series_mb: float | None = MAX_SERIES_MB,
    ) -> None:
        """Pick the SAG_IW_TSE series, read the clinical files and select the paper's cohorts."""
        from kneepain.console import fail, stage
        from kneepain.ingest import IngestError
        from kneepain.ingest.cohort import SelectionRules
        from kneepain.ingest.pipeline import run_ingest
        from kneepain.preprocess.series_io import DicomLimits, SeriesError

        rules = SelectionRules(pain_right=pain_right, pain_left=pain_left, womac_difference=womac_diff)
        try:
            DicomLimits.set_for_this_run(max_slice_pixels, max_series_mb)
            DicomLimits.from_environment()
            with stage("ingest") as info:
                info.update(
                    run_ingest(
                        images,
                        clinical,
                        out,
                        index_csv=index,
                        rules=rules,
                        visit=visit,
                        workers=workers or None,
                        equal_var=student,
                    )
                )
        except (IngestError, SeriesError) as error:
            fail("ingest stopped", error)
            raise typer.Exit(code=2) from error
