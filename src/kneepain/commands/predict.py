"""`kneepain predict --left DIR --right DIR --model BUNDLE [--out DIR]`: one new person's knees.

Or from a PACS: `--dicomweb URL --study UID [--study UID] | --patient ID`; results as DICOM with
`--dicom-out DIR` and/or `--store` (STOW-RS back into the source studies). See docs/pacs.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from kneepain.commands.limits import MAX_SERIES_MB, MAX_SLICE_PIXELS


def register(app: typer.Typer) -> None:
    """Add the `predict` command."""

    @app.command("predict")
    def predict(
        left: Path | None = typer.Option(
            None, "--left", help="DICOM series folder of the LEFT knee (any file names)."
        ),
        right: Path | None = typer.Option(None, "--right", help="DICOM series folder of the RIGHT knee."),
        model: Path = typer.Option(
            ..., "--model", help="Model bundle folder (e.g. WORK/runs/RUN/fold_00/bundle)."
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Write prediction.json, summary.txt and overlay PNGs here (replaced whole)."
        ),
        precision: str = typer.Option(
            "auto", help="auto (bf16 where the CPU computes it natively, else fp32) | fp32 | bf16."
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
        dicomweb: str | None = typer.Option(
            None,
            "--dicomweb",
            help="Read the knees from this DICOMweb root (e.g. http://pacs:8042/dicom-web).",
        ),
        study: list[str] = typer.Option(
            [], "--study", help="StudyInstanceUID to search (repeat: OAI keeps each knee in its own study)."
        ),
        patient: str | None = typer.Option(
            None, "--patient", help="PatientID: search that person's studies."
        ),
        user: str | None = typer.Option(None, "--user", help="HTTP basic user for --dicomweb."),
        password: str | None = typer.Option(
            None,
            "--password",
            envvar="KNEEPAIN_DICOMWEB_PASSWORD",
            show_default=False,
            help="HTTP basic password (better: the environment variable, not the command line).",
        ),
        token: str | None = typer.Option(
            None,
            "--token",
            envvar="KNEEPAIN_DICOMWEB_TOKEN",
            show_default=False,
            help="OAuth bearer token for --dicomweb (better: the environment variable).",
        ),
        timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait for each DICOMweb answer."),
        dicom_out: Path | None = typer.Option(
            None, "--dicom-out", help="Write the CAM parametric maps, findings SR and overlays as DICOM here."
        ),
        store: bool = typer.Option(
            False, "--store", help="Send those DICOM objects back into the source studies (STOW-RS)."
        ),
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
        pacs = dicomweb is not None or study or patient is not None or dicom_out is not None or store
        try:
            if pacs:
                from kneepain.dicomweb.predict import PacsSource, predict_with_pacs

                if dicomweb is None and (study or patient is not None):
                    raise PredictInputError("--study and --patient need --dicomweb URL")
                source = None
                if dicomweb is not None:
                    source = PacsSource(dicomweb, list(study), patient, user, password, token, timeout)
                document = predict_with_pacs(
                    left,
                    right,
                    model,
                    out,
                    source=source,
                    dicom_out=dicom_out,
                    store=store,
                    precision=precision,
                    allow_qc_fail=allow_qc_fail,
                )
            elif left is None or right is None:
                raise PredictInputError(
                    "give --left and --right series folders (or --dicomweb URL --study UID)"
                )
            else:
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
        if "dicomweb" in document:
            info = document["dicomweb"]
            steps = ", ".join(f"{k} {v:.2f}" for k, v in info["timing_s"].items())
            done = (
                [f"wrote {len(info['written'])} DICOM files to {safe(dicom_out)}"]
                if "written" in info
                else []
            )
            done += [f"stored {len(info['stored'])} objects by STOW-RS"] if "stored" in info else []
            console.print(f"predict: {'; '.join([*done, f'time (s): {steps}'])}")
