"""`kneepain preprocess`: centre slice, registration, crop, QC and the slice cache."""

from __future__ import annotations

from pathlib import Path

import typer

from kneepain.commands.limits import MAX_SERIES_MB, MAX_SLICE_PIXELS


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError as error:
        raise typer.BadParameter(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from error
    if not (n >= 1 and 0 <= i < n):
        raise typer.BadParameter(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def register(app: typer.Typer) -> None:
    """Add the `preprocess` command."""

    @app.command("preprocess")
    def preprocess(
        work: Path = typer.Argument(..., help="Work folder holding ingest/ (series.csv, cohort.csv)."),
        workers: int = typer.Option(0, help="Processes (0: all cores)."),
        shard: str = typer.Option("", help="Process every n-th subject starting at i ('i/n'); no merge."),
        no_register: bool = typer.Option(
            False, "--no-register", help="The paper's ablation: slices 8-30 of the raw series, no alignment."
        ),
        centres: Path | None = typer.Option(
            None,
            help="CSV subject_id,side,centre_slice (0-based, InstanceNumber order) overriding detection.",
        ),
        qc_overrides: Path | None = typer.Option(
            None, help="CSV subject_id,side(left/right/both),qc_pass(true/false),note overriding QC flags."
        ),
        merge_only: bool = typer.Option(False, help="Only join the shards' parts into the cache."),
        template: Path | None = typer.Option(
            None,
            help="Registration template to reuse (a template.npy, e.g. another cohort's WORK/preprocess/"
            "template.npy) instead of building one from this cohort.",
        ),
        template_only: bool = typer.Option(
            False,
            help="Build (or check) WORK/preprocess/template.npy and stop; run it once before "
            "launching --shard jobs so they all share one template.",
        ),
        bundle: Path | None = typer.Option(
            None,
            help="Model bundle whose training cohort's acquisition (slice thickness and spacing, pixel "
            "spacing, sequence) the series are checked against; default: the cohort's own median. "
            "Differences are warned about (protocol.csv), not resampled.",
        ),
        max_slice_pixels: int | None = MAX_SLICE_PIXELS,
        max_series_mb: float | None = MAX_SERIES_MB,
    ) -> None:
        """Build the registered, cropped slice cache (WORK/preprocess/) with its QC report."""
        from kneepain.console import console, fail, safe
        from kneepain.preprocess import CacheMismatchError, PreprocessInputError, run_preprocess
        from kneepain.preprocess.series_io import DicomLimits, SeriesError

        try:
            DicomLimits.set_for_this_run(max_slice_pixels, max_series_mb)
            DicomLimits.from_environment()
            summary = run_preprocess(
                work,
                workers=workers or None,
                shard=_parse_shard(shard),
                register=not no_register,
                centre_csv=centres,
                qc_override_csv=qc_overrides,
                merge_only=merge_only,
                template=template,
                template_only=template_only,
                bundle=bundle,
            )
        except (CacheMismatchError, PreprocessInputError, SeriesError, ValueError) as error:
            fail("preprocess", error)
            raise typer.Exit(2) from error
        console.print(", ".join(f"{key} {safe(value)}" for key, value in summary.items()))
