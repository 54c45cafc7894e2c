"""The DICOM size-limit options shared by the commands that read images (ingest, preprocess, predict)."""

from __future__ import annotations

import typer

MAX_SLICE_PIXELS = typer.Option(
    None,
    "--max-slice-pixels",
    min=1,
    help="Largest image one DICOM file may declare (Rows x Columns x frames), checked from the header "
    "before any pixel is decoded (default 16777216 = 4096 x 4096; or set KNEEPAIN_MAX_SLICE_PIXELS).",
)
MAX_SERIES_MB = typer.Option(
    None,
    "--max-series-mb",
    min=1,
    help="Largest pixel data one series' files may declare together, in MB "
    "(default 1024; or set KNEEPAIN_MAX_SERIES_MB).",
)
