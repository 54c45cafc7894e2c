"""The acquisition a model was trained on, and a check that a new person's series match it.

The cache's 23-slice window is 23 slices, not 23 x 3 mm: a 1.5 mm series gives a window half as
wide as the one the model learnt from, and nothing in the pixels says so. The cv stage records the
training cohort's slice thickness and pixel spacing (medians over its series in series.csv) in
every bundle; predict compares the person's series with them and warns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    return {
        "series": len(rows),
        "slice_thickness_mm": float(thickness.median()),
        "pixel_spacing_mm": float(pixel.median()),
    }


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
