"""The acquisition a model was trained on, and a check that a new person's series match it.

The cache's 23-slice window is 23 slices, not 23 x 3 mm: a 1.5 mm series gives a window half as
wide as the one the model learnt from, and nothing in the pixels says so. The cv stage records the
training cohort's slice thickness and pixel spacing (medians over its series in series.csv) in
every bundle; predict compares the person's series with them and warns. Preprocess compares each
knee's series (slice thickness and spacing, pixel spacing, sequence name) with a bundle's training
cohort, or with the cohort's own median, and warns (``protocol_mismatches``).

Why warn and not resample: resampling a 1.5 mm series to 3 mm slices, or a DESS to look like an
IW TSE, makes an input the model has never seen look like one it has; the contrast and the
partial volume still differ, and the result would carry no sign of it. A warning names the knees
so the reader decides (exclude them, or train on that protocol).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Beyond these relative differences a series is not the protocol the model was trained on.
SLICE_TOLERANCE = 0.2
PIXEL_TOLERANCE = 0.25


def summarize_acquisition(series: pd.DataFrame, subject_ids: Iterable[str]) -> dict[str, Any] | None:
    """Medians of slice thickness and in-plane pixel spacing over the series (series.csv rows) of
    ``subject_ids``; None when the table lacks them."""
    needed = {"subject_id", "slice_thickness_mm", "pixel_spacing_row_mm", "pixel_spacing_col_mm"}
    if not needed <= set(series.columns):
        return None
    rows = series[series["subject_id"].astype(str).isin({str(s) for s in subject_ids})]
    thickness = pd.to_numeric(rows["slice_thickness_mm"], errors="coerce").dropna()
    pixel = pd.to_numeric(rows["pixel_spacing_row_mm"], errors="coerce").dropna()
    if thickness.empty or pixel.empty:
        return None
    summary = {
        "series": len(rows),
        "slice_thickness_mm": float(thickness.median()),
        "pixel_spacing_mm": float(pixel.median()),
    }
    if "series_description" in rows.columns and rows["series_description"].notna().any():
        summary["sequence"] = str(rows["series_description"].dropna().map(sequence_name).mode().iloc[0])
    return summary


def slice_spacing_mm(positions: np.ndarray, normal: np.ndarray) -> float:
    """Median distance between neighbouring slices along the slice normal (ImagePositionPatient)."""
    along = np.sort(np.asarray(positions, float) @ np.asarray(normal, float))
    steps = np.diff(along)
    return float(np.median(np.abs(steps))) if len(steps) else math.nan


def protocol_warnings(
    trained: dict[str, Any] | None, side: str, slice_mm: float, pixel_mm: float, window_slices: int
) -> list[str]:
    """Warnings for one knee whose slices are ``slice_mm`` apart with ``pixel_mm`` pixels, against
    the training cohort's acquisition ``trained`` (a bundle's ``acquisition``; none: no check)."""
    if not trained:
        return []
    warnings = []
    expected = trained["slice_thickness_mm"]
    if math.isfinite(slice_mm) and abs(slice_mm - expected) > SLICE_TOLERANCE * expected:
        warnings.append(
            f"{side} knee: slices {slice_mm:.2f} mm apart, the model was trained on {expected:.2f} mm: its "
            f"{window_slices}-slice window covers {window_slices * slice_mm:.1f} mm instead of "
            f"{window_slices * expected:.1f} mm; the prediction and maps are outside what the model learnt"
        )
    expected = trained["pixel_spacing_mm"]
    if math.isfinite(pixel_mm) and abs(pixel_mm - expected) > PIXEL_TOLERANCE * expected:
        warnings.append(
            f"{side} knee: pixels {pixel_mm:.3f} mm, the model was trained on {expected:.3f} mm "
            "(the crop is resampled to the same physical size, but the detail differs)"
        )
    return warnings


SEQUENCE_SIDE = re.compile(r"[_ ^-]*(LEFT|RIGHT|LT|RT)\s*$", re.IGNORECASE)


def sequence_name(series_description: str) -> str:
    """The sequence part of a SeriesDescription: side suffix removed, upper case
    (``Sag_IW_TSE_RIGHT`` -> ``SAG_IW_TSE``)."""
    return SEQUENCE_SIDE.sub("", str(series_description).strip()).upper()


def read_series_protocol(folder: Path, max_files: int = 3) -> dict[str, Any]:
    """Slice thickness, slice spacing, pixel spacing and sequence name of one series folder, from
    the headers (no pixel data) of its first ``max_files`` files by name (neighbouring slices in
    OAI's numbering; the median step between them is the spacing); NaN / "" where missing."""
    from kneepain.preprocess.series_io import read_header

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    files = files[:max_files]
    headers = []
    for path in files:
        try:
            headers.append(read_header(path))
        except Exception:
            continue
    record: dict[str, Any] = {"slice_thickness_mm": math.nan, "slice_spacing_mm": math.nan}
    record.update(pixel_spacing_mm=math.nan, sequence="")
    if not headers:
        return record
    first = headers[0]
    record["sequence"] = sequence_name(getattr(first, "SeriesDescription", ""))
    if getattr(first, "SliceThickness", None) is not None:
        record["slice_thickness_mm"] = float(first.SliceThickness)
    if getattr(first, "PixelSpacing", None) is not None:
        record["pixel_spacing_mm"] = float(first.PixelSpacing[0])
    positions = [h.ImagePositionPatient for h in headers if getattr(h, "ImagePositionPatient", None)]
    orientation = getattr(first, "ImageOrientationPatient", None)
    if len(positions) >= 2 and orientation is not None:
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        record["slice_spacing_mm"] = slice_spacing_mm(np.asarray(positions, float), normal)
    return record


def reference_protocol(protocols: pd.DataFrame) -> dict[str, Any]:
    """The cohort's own protocol: median thickness, spacing and pixel size, most common sequence."""
    sequences = protocols["sequence"][protocols["sequence"] != ""]
    return {
        "slice_thickness_mm": float(protocols["slice_thickness_mm"].median()),
        "slice_spacing_mm": float(protocols["slice_spacing_mm"].median()),
        "pixel_spacing_mm": float(protocols["pixel_spacing_mm"].median()),
        "sequence": str(sequences.mode().iloc[0]) if len(sequences) else "",
        "source": "the cohort's median",
    }


def protocol_mismatches(protocols: pd.DataFrame, reference: dict[str, Any]) -> pd.DataFrame:
    """Knees (rows of ``protocols``: subject_id, side and the read_series_protocol fields) whose
    acquisition differs from ``reference``; one row per knee with the differences in words."""
    rows = []
    for record in protocols.to_dict("records"):
        found = []
        for key, tolerance, label in (
            ("slice_thickness_mm", SLICE_TOLERANCE, "slice thickness"),
            ("slice_spacing_mm", SLICE_TOLERANCE, "slice spacing"),
            ("pixel_spacing_mm", PIXEL_TOLERANCE, "pixel spacing"),
        ):
            value, expected = record.get(key, math.nan), reference.get(key, math.nan)
            if expected is None or not (math.isfinite(value) and math.isfinite(expected)):
                continue
            if abs(value - expected) > tolerance * expected:
                found.append(f"{label} {value:.3g} mm (expected {expected:.3g})")
        sequence = reference.get("sequence") or ""
        if sequence and record.get("sequence") and record["sequence"] != sequence:
            found.append(f"sequence {record['sequence']} (expected {sequence})")
        if found:
            rows.append(
                {"subject_id": record["subject_id"], "side": record["side"], "differs": "; ".join(found)}
            )
    return pd.DataFrame(rows, columns=["subject_id", "side", "differs"])
