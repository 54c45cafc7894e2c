"""Read one knee's sagittal DICOM series into a volume whose slice index +k points lateral.

DICOM patient coordinates are LPS: x grows toward the patient's left. A sagittal series has its
slice normal along x, so slices are ordered by ImagePositionPatient projected on that axis (never by
InstanceNumber, whose direction differs between scanners). For a left knee lateral is +x, for a
right knee lateral is -x, so the right knee's order is reversed. In-plane, rows are turned to run
superior -> inferior and columns anterior -> posterior, so every knee is seen the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class SeriesError(ValueError):
    """A series that cannot be read as one sagittal knee volume; the message names the folder."""


@dataclass
class KneeVolume:
    """One knee series: voxels (slices, rows, cols) float32, slice 0 most medial, +k lateral."""

    voxels: np.ndarray
    spacing_row_mm: float
    spacing_col_mm: float
    slice_positions_mm: np.ndarray  # position of each slice along the lateral axis (mm)
    series_index: np.ndarray  # each slice's 0-based index in the series sorted by InstanceNumber
    side: str
    path: Path

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])

    def to_lateral_index(self, series_index: int) -> int:
        """Index in this (lateral-ordered) volume of the slice at ``series_index`` in InstanceNumber order."""
        hits = np.flatnonzero(self.series_index == series_index)
        if hits.size == 0:
            raise SeriesError(f"{self.path}: no slice with series index {series_index}")
        return int(hits[0])


def read_knee_series(folder: str | Path, side: str) -> KneeVolume:
    """Read every DICOM file in ``folder`` (no extensions assumed) as one knee, lateral = +k.

    Raises SeriesError naming the folder when it holds no DICOM slices, mixed sizes, or is not sagittal.
    """
    import pydicom

    folder = Path(folder)
    if side not in ("left", "right"):
        raise SeriesError(f"{folder}: side must be 'left' or 'right', got {side!r}")
    if not folder.is_dir():
        raise SeriesError(f"{folder}: series folder does not exist")
    datasets = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            datasets.append(pydicom.dcmread(file))
        except pydicom.errors.InvalidDicomError:
            continue  # a stray non-DICOM file (e.g. a listing) is not part of the series
    if not datasets:
        raise SeriesError(f"{folder}: holds no DICOM slices")
    try:
        orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        positions = np.array([np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets])
        spacing = [float(v) for v in datasets[0].PixelSpacing]
    except AttributeError as error:
        raise SeriesError(f"{folder}: slice lacks a geometry tag ({error})") from error
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(normal[0]) < 0.8:
        raise SeriesError(f"{folder}: not a sagittal series (slice normal {np.round(normal, 2).tolist()})")
    shapes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(shapes) != 1:
        raise SeriesError(f"{folder}: slices have different sizes {sorted(shapes)}")

    instance = np.array([int(getattr(d, "InstanceNumber", i)) for i, d in enumerate(datasets)])
    series_order = np.argsort(instance, kind="stable")
    series_index = np.empty(len(datasets), dtype=int)
    series_index[series_order] = np.arange(len(datasets))

    # Position along the patient's x axis; lateral is +x for the left knee, -x for the right.
    lateral_sign = 1.0 if side == "left" else -1.0
    lateral_mm = positions[:, 0] * lateral_sign
    order = np.argsort(lateral_mm, kind="stable")
    voxels = np.stack([_pixels(datasets[i]) for i in order]).astype(np.float32)

    # ImageOrientationPatient: first triple is the direction along a row (column index grows),
    # second along a column (row index grows). Make rows run inferior (-z) and columns posterior (+y).
    if col_dir[2] > 0:
        voxels = voxels[:, ::-1, :]
    if row_dir[1] < 0:
        voxels = voxels[:, :, ::-1]
    return KneeVolume(
        voxels=np.ascontiguousarray(voxels),
        spacing_row_mm=spacing[0],
        spacing_col_mm=spacing[1],
        slice_positions_mm=lateral_mm[order],
        series_index=series_index[order],
        side=side,
        path=folder,
    )


def _pixels(dataset: object) -> np.ndarray:
    """Stored values mapped to signal: rescale applied, MONOCHROME1 inverted so bright = high signal."""
    pixels = dataset.pixel_array.astype(np.float32)  # type: ignore[attr-defined]
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    if getattr(dataset, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    return pixels
