"""From a cache pixel back to the scanner: the inverse of crop + registration + in-plane turn.

Forward, preprocessing takes a stored DICOM slice, turns it so rows run inferior and columns
posterior (``series_io``), and samples it through the slice's registration pose onto the crop
grid (``registration.resample``: ``crop_mm`` square, ``image_size`` pixels, centred at
``crop_centre_mm``). ``resample`` maps every output pixel to the raw pixel it samples; that map
is the inverse we need, written out here in the same three steps (output pixel -> canonical mm ->
raw mm through the pose -> raw pixel), then the in-plane turn is undone and DICOM's
ImagePositionPatient + column * PixelSpacing[1] * row direction + row * PixelSpacing[0] * column
direction gives the point in patient coordinates (LPS, mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kneepain.preprocess.registration import Pose


@dataclass(frozen=True)
class CropGrid:
    """The cache's sampling grid: ``image_size`` pixels over ``crop_mm``, centred at ``centre_mm``."""

    crop_mm: float
    image_size: int
    centre_mm: tuple[float, float] = (0.0, 0.0)  # (row, col) in the canonical frame

    @property
    def spacing_mm(self) -> float:
        return self.crop_mm / self.image_size


@dataclass(frozen=True)
class SliceGeometry:
    """A stored DICOM slice's place in the scanner and size."""

    position: np.ndarray  # ImagePositionPatient: centre of the first stored pixel, mm
    orientation: np.ndarray  # ImageOrientationPatient (6,)
    spacing_rc_mm: tuple[float, float]  # PixelSpacing: between rows, between columns
    rows: int
    columns: int

    @property
    def row_direction(self) -> np.ndarray:
        """Direction in which the column index grows (along a row)."""
        return np.asarray(self.orientation[:3], float)

    @property
    def column_direction(self) -> np.ndarray:
        """Direction in which the row index grows (down a column)."""
        return np.asarray(self.orientation[3:], float)

    def flips(self) -> tuple[bool, bool]:
        """(rows flipped, columns flipped) by series_io's turn to rows inferior, columns posterior."""
        return bool(self.column_direction[2] > 0), bool(self.row_direction[1] < 0)


def cache_to_raw_pixel(
    cache_rc: tuple[float, float],
    grid: CropGrid,
    pose: Pose,
    raw_shape: tuple[int, int],
    spacing_rc_mm: tuple[float, float],
) -> tuple[float, float]:
    """(row, col) of a cache pixel -> (row, col) in the turned raw slice it was sampled from."""
    row, col = cache_rc
    out_centre = (grid.image_size - 1) / 2.0
    canonical = np.array(
        [
            grid.centre_mm[1] + (col - out_centre) * grid.spacing_mm,  # x (along columns)
            grid.centre_mm[0] + (row - out_centre) * grid.spacing_mm,  # y (along rows)
            1.0,
        ]
    )
    raw_mm = pose.matrix() @ canonical  # x, y relative to the raw slice's centre
    sr, sc = spacing_rc_mm
    raw_col = raw_mm[0] / sc + (raw_shape[1] - 1) / 2.0
    raw_row = raw_mm[1] / sr + (raw_shape[0] - 1) / 2.0
    return float(raw_row), float(raw_col)


def raw_to_stored_pixel(raw_rc: tuple[float, float], geometry: SliceGeometry) -> tuple[float, float]:
    """Undo series_io's in-plane turn: (row, col) in the turned slice -> (row, col) as stored."""
    row, col = raw_rc
    flip_rows, flip_cols = geometry.flips()
    if flip_rows:
        row = geometry.rows - 1 - row
    if flip_cols:
        col = geometry.columns - 1 - col
    return row, col


def stored_pixel_to_patient(stored_rc: tuple[float, float], geometry: SliceGeometry) -> np.ndarray:
    """DICOM's pixel -> patient mapping (PS3.3 C.7.6.2.1.1) for a (row, col) of the stored slice."""
    row, col = stored_rc
    spacing_between_rows, spacing_between_columns = geometry.spacing_rc_mm
    return (
        np.asarray(geometry.position, float)
        + col * spacing_between_columns * geometry.row_direction
        + row * spacing_between_rows * geometry.column_direction
    )


def cache_to_patient(
    cache_rc: tuple[float, float], grid: CropGrid, pose: Pose, geometry: SliceGeometry
) -> tuple[np.ndarray, tuple[float, float]]:
    """Patient coordinates (LPS, mm) of a cache pixel, and the stored-slice (row, col) it came from."""
    raw = cache_to_raw_pixel(cache_rc, grid, pose, (geometry.rows, geometry.columns), geometry.spacing_rc_mm)
    stored = raw_to_stored_pixel(raw, geometry)
    return stored_pixel_to_patient(stored, geometry), stored
