"""Map a synthetic truth lesion mask into cache space with the cache's own transforms (evaluation only).

Used by ``cam`` localisation: the same slice choice, pose, crop and resize as the pixels, with
nearest-neighbour sampling so label codes stay codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.contracts import N_SLICES, REGISTRATION_TABLE, WorkPaths
from kneepain.preprocess.config import read_config
from kneepain.preprocess.registration import Pose, resample


def mask_to_cache(truth_dir: Path, work: Path, subject_id: str, side: str) -> np.ndarray | None:
    """Lesion labels (23, 224, 224) uint8 of one knee in cache space, or None without a mask file."""
    import cv2
    import pydicom

    path = Path(truth_dir) / "masks" / f"{subject_id}_{side}.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        labels = np.asarray(data["mask"])
    paths = WorkPaths(Path(work))
    config = read_config(paths.cache_config)
    registration = pd.read_csv(paths.preprocess / REGISTRATION_TABLE, dtype={"subject_id": str})
    rows = registration[(registration["subject_id"] == subject_id) & (registration["side"] == side)]
    series = pd.read_csv(paths.series_table, dtype={"subject_id": str})
    entry = series[(series["subject_id"] == subject_id) & (series["side"] == side)]
    if rows.empty or entry.empty:
        raise ValueError(
            f"{paths.preprocess}: no registration rows or series for subject {subject_id} {side}"
        )
    entry = entry.iloc[0]
    spacing = (float(entry["pixel_spacing_row_mm"]), float(entry["pixel_spacing_col_mm"]))
    # The same in-plane turn as series_io: rows inferior, columns posterior.
    folder = Path(entry["path"])
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: series folder of subject {subject_id} {side} not found (truth masks are mapped"
            " through the series' own orientation: keep the cohort's images)"
        )
    first = next(p for p in sorted(folder.iterdir()) if p.is_file())
    orientation = np.asarray(pydicom.dcmread(first, stop_before_pixels=True).ImageOrientationPatient, float)
    if orientation[5] > 0:
        labels = labels[:, ::-1, :]
    if orientation[1] < 0:
        labels = labels[:, :, ::-1]
    size = config.image_size
    out = np.zeros((N_SLICES, size, size), np.uint8)
    for row in rows.itertuples(index=False):
        if pd.isna(row.series_index) or not 0 <= int(row.series_index) < labels.shape[0]:
            continue
        pose = (
            Pose()
            if pd.isna(row.rotation_deg)
            else Pose(row.rotation_deg, row.shift_row_mm, row.shift_col_mm)
        )
        sampled = resample(
            labels[int(row.series_index)].astype(np.float32),
            spacing,
            pose,
            (size, size),
            config.crop_mm / size,
            config.crop_centre_mm,
            interpolation=cv2.INTER_NEAREST,
        )
        out[int(row.slice)] = sampled.astype(np.uint8)
    return out
