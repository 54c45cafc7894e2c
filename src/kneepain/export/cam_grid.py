"""A CAM from the cache grid onto the stored DICOM slice it was computed from.

Preprocessing samples each stored slice through an affine map (in-plane turn, registration pose,
crop: ``kneepain.predict.geometry``). That map from a cache pixel to a stored pixel is affine, so
three points through the same functions give it exactly; its inverse samples the cache-grid CAM
at every stored pixel, so a viewer overlays the map on the original slice pixel for pixel.
"""

from __future__ import annotations

import numpy as np

from kneepain.predict.geometry import CropGrid, SliceGeometry, cache_to_raw_pixel, raw_to_stored_pixel
from kneepain.preprocess.registration import Pose


def cache_to_stored_affine(
    grid: CropGrid, pose: Pose, geometry: SliceGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with stored (row, col) = A @ cache (row, col) + b for this slice and pose."""

    def stored(rc: tuple[float, float]) -> np.ndarray:
        raw = cache_to_raw_pixel(rc, grid, pose, (geometry.rows, geometry.columns), geometry.spacing_rc_mm)
        return np.asarray(raw_to_stored_pixel(raw, geometry), float)

    origin = stored((0.0, 0.0))
    matrix = np.stack([stored((1.0, 0.0)) - origin, stored((0.0, 1.0)) - origin], axis=1)
    return matrix, origin


def cam_on_stored_grid(cam: np.ndarray, grid: CropGrid, pose: Pose, geometry: SliceGeometry) -> np.ndarray:
    """One slice's CAM (any size; upsampled bilinearly to the cache grid) on the stored slice, float32.

    Stored pixels outside the preprocessing crop get 0.
    """
    from scipy.ndimage import affine_transform

    from kneepain.cam.overlay import upsample

    cache_map = upsample(cam, (grid.image_size, grid.image_size))
    matrix, origin = cache_to_stored_affine(grid, pose, geometry)
    inverse = np.linalg.inv(matrix)
    return affine_transform(
        cache_map,
        inverse,
        offset=-inverse @ origin,
        output_shape=(geometry.rows, geometry.columns),
        order=1,
        mode="constant",
        cval=0.0,
    ).astype(np.float32)
