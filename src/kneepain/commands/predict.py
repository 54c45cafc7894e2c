"""`kneepain predict --left DIR --right DIR --model BUNDLE [--out DIR]`: one new person's knees."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kneepain.commands.limits import MAX_SERIES_MB, MAX_SLICE_PIXELS


def register(app: typer.Typer) -> None:
    """Add the `predict` command."""

    @app.command("predict")
    def predict(
        left: Path = typer.Option(
            ..., "--left", help="DICOM series folder of the LEFT knee (any file names)."
        ),
        right: Path = typer.Option(..., "--right", help="DICOM series folder of the RIGHT knee."),
        model: Path = typer.Option(
            ..., "--model", help="Model bundle folder (e.g. WORK/runs/RUN/fold_00/bundle)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Write prediction.json, summary.txt and overlay PNGs here (replaced whole)."
        ),
        precision: str = typer.Option(
            "fp32", help="fp32 | bf16 (CPU autocast; slower on CPUs without bf16)."
        ),
        allow_qc_fail: bool = typer.Option(
            False,
            "--allow-qc-fail",
            help="Predict even when a knee fails the quality check (flagged loudly).",
        ),
        as_json: bool = typer.Option(
            False, "--json", help="Print the JSON document on stdout (summary on stderr)."
        ),
        max_slice_pixels: int | None = MAX_SLICE_PIXELS,
        max_series_mb: float | None = MAX_SERIES_MB,
    ) -> None:
        """Probability that each knee is the painful one, highest-CAM slice and hot spot (scanner mm).

        Refuses, naming the folder: both series of one side, a series given for the wrong side, a
        non-sagittal or too short series, two PatientIDs, an empty or non-DICOM folder, a bundle
        whose preprocessing or input size cannot be reproduced, and a knee failing QC (unless
        --allow-qc-fail). Research software: not for clinical use.
        """
        from rich.console import Console

        from kneepain.console import console, fail, safe
        from kneepain.predict import PredictInputError, predict_person
        from kneepain.preprocess.series_io import DicomLimits

        DicomLimits.set_for_this_run(max_slice_pixels, max_series_mb)
        try:
            document = predict_person(
                left, right, model, out, precision=precision, allow_qc_fail=allow_qc_fail
            )
        except PredictInputError as error:
            fail("predict", error)
            raise typer.Exit(code=2) from error
        summary = document["summary"]
        if as_json:
            console.print(summary, soft_wrap=True, markup=False)
            typer.echo(json.dumps(document, indent=2, sort_keys=True))
        else:
            Console(highlight=False, soft_wrap=True).print(summary, markup=False)
        if not document["qc_pass"]:
            console.print("[bold red]predict: QUALITY CHECK FAILED; see the warnings above[/bold red]")
        if out is not None:
            console.print(f"predict: wrote {safe(out)}")
