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
    # ImageOrientationPatient: first triple is the direction along a row (column index grows),
    # second along a column (row index grows). Make rows run inferior (-z) and columns posterior (+y).
    flip_rows, flip_cols = bool(col_dir[2] > 0), bool(row_dir[1] < 0)
    # Each slice is written straight into one preallocated array (flips as views): stacking
    # per-slice float copies and flipping afterwards cost more than reading the files.
    rows, columns = shapes.pop()
    voxels = np.empty((len(datasets), rows, columns), dtype=np.float32)
    for k, i in enumerate(order):
        pixels = _pixels(datasets[i])
        voxels[k] = pixels[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]
    return KneeVolume(
        voxels=voxels,
        spacing_row_mm=spacing[0],
        spacing_col_mm=spacing[1],
        slice_positions_mm=lateral_mm[order],
        series_index=series_index[order],
        side=side,
        path=folder,
    )


def _pixels(dataset: object) -> np.ndarray:
    """Stored values mapped to signal: rescale applied, MONOCHROME1 inverted so bright = high signal."""
    pixels = _stored_values(dataset)
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    inverted = getattr(dataset, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1"
    if slope == 1.0 and intercept == 0.0 and not inverted:
        return pixels  # the common case: stored values are the signal, converted once by the caller
    pixels = pixels.astype(np.float32) * slope + intercept
    if inverted:
        pixels = pixels.max() - pixels
    return pixels


def _stored_values(dataset: object) -> np.ndarray:
    """The stored pixel values of one slice (as pydicom's ``pixel_array`` gives them).

    Uncompressed, unsigned 16-bit, single-frame data (what MR scanners write) is read straight
    from the bytes, with bits above BitsStored cleared as pydicom does: its general decoder costs
    about 1 ms a slice, a third of reading a knee. Anything else goes through ``pixel_array``.
    """
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    rows, columns = int(getattr(dataset, "Rows", 0)), int(getattr(dataset, "Columns", 0))
    bits = int(getattr(dataset, "BitsStored", 16) or 16)
    if (
        syntax is not None
        and not syntax.is_compressed
        and getattr(dataset, "BitsAllocated", None) == 16
        and getattr(dataset, "PixelRepresentation", None) == 0
        and getattr(dataset, "SamplesPerPixel", 1) == 1
        and int(getattr(dataset, "NumberOfFrames", 1) or 1) == 1
        and 0 < bits <= 16
    ):
        data = getattr(dataset, "PixelData", b"")
        if len(data) >= 2 * rows * columns > 0:
            dtype = np.dtype("<u2" if syntax.is_little_endian else ">u2")
            values = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
            return values if bits == 16 else values & np.uint16((1 << bits) - 1)
    return dataset.pixel_array  # type: ignore[attr-defined]
