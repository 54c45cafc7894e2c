"""Find the centre (PCL / intercondylar notch) slice of a knee, or take it from a manual list.

Detection has three steps. A first guess is the middle of the knee's medio-lateral extent (the
slices whose foreground area is at least half the largest), which is not the PCL slice in real
knees. The slice near it (every other slice within ``search``) that fits the template's centre
slice best gives the starting pose (``start_pose``). Then the whole 23-slice window is matched to
the 23 per-offset templates: every slice is aligned with that pose, and the centre is the
candidate (within ``search`` slices of the start) whose window correlates best with the template
stack. Matching the whole stack uses the shape of both condyles and the notch, not a
single slice, which makes it robust to noise in any one slice.

Centre slices in files (manual CSV, index.csv, qc.csv) are 0-based indices into the series sorted
by InstanceNumber, the order a DICOM viewer shows; inside the code volumes are ordered lateral.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.preprocess.registration import WORK_SPACING_MM, Pose, RegistrationResult, register_ecc, resample
from kneepain.preprocess.series_io import KneeVolume


def extent_centre(volume: KneeVolume) -> int:
    """Middle of the slices whose foreground area is at least half the largest (lateral index)."""
    sample = volume.voxels[:, ::4, ::4]  # every 16th pixel (1.4 mm apart) measures areas well enough
    level = float(np.percentile(sample, 99)) * 0.25
    areas = (sample > level).reshape(volume.n_slices, -1).mean(axis=1)
    if areas.max() <= 0:
        return volume.n_slices // 2
    inside = np.flatnonzero(areas >= 0.5 * areas.max())
    return (int(inside[0]) + int(inside[-1])) // 2


def start_pose(
    volume: KneeVolume, templates: np.ndarray, guess: int, search: int, motion: str
) -> tuple[int, RegistrationResult]:
    """The slice near ``guess`` (every other slice within ``search``) that fits the template's
    centre slice best, and its fit: the pose the window is aligned with before stack matching.

    The middle of the knee's medial-lateral extent is not the PCL slice (the medial condyle is
    larger; real knees put the PCL one to a few slices off it), and a condyle slice fitted to the
    notch template can converge to a wrong pose, after which no candidate matches. Trying a few
    slices and keeping the best fit costs a few ECC fits and does not assume where the PCL is.
    """
    spacing = (volume.spacing_row_mm, volume.spacing_col_mm)
    half = templates.shape[0] // 2
    best: tuple[float, int, RegistrationResult] | None = None
    for index in range(guess - search, guess + search + 1, 2):
        if not 0 <= index < volume.n_slices:
            continue
        fit = register_ecc(templates[half], volume.voxels[index], spacing, motion=motion)
        if best is None or fit.correlation > best[0]:
            best = (fit.correlation, index, fit)
    assert best is not None, "the guess lies inside the series"
    return best[1], best[2]


def aligned_stack(volume: KneeVolume, pose: Pose | np.ndarray, field_px: int) -> np.ndarray:
    """Every slice of the volume resampled through one pose (or 2x3 fit) onto the template grid,
    normalised."""
    spacing = (volume.spacing_row_mm, volume.spacing_col_mm)
    stack = np.stack(
        [resample(s, spacing, pose, (field_px, field_px), WORK_SPACING_MM) for s in volume.voxels]
    )
    flat = stack.reshape(stack.shape[0], -1)
    flat = (flat - flat.mean(axis=1, keepdims=True)) / np.maximum(flat.std(axis=1, keepdims=True), 1e-6)
    return flat.reshape(stack.shape)


def match_centre(stack: np.ndarray, templates: np.ndarray, guess: int, search: int) -> tuple[int, np.ndarray]:
    """Candidate centre (lateral index) whose window best correlates with the template stack.

    Returns the best centre and the score per candidate (``guess - search .. guess + search``).
    """
    half = templates.shape[0] // 2
    flat_t = templates.reshape(templates.shape[0], -1)
    flat_t = (flat_t - flat_t.mean(axis=1, keepdims=True)) / np.maximum(
        flat_t.std(axis=1, keepdims=True), 1e-6
    )
    flat_s = stack.reshape(stack.shape[0], -1)
    # correlation of every volume slice with every template offset
    corr = flat_s @ flat_t.T / flat_t.shape[1]
    candidates = np.arange(guess - search, guess + search + 1)
    scores = np.full(candidates.size, -np.inf)
    for i, c in enumerate(candidates):
        offsets = np.arange(-half, half + 1)
        slices = c + offsets
        ok = (slices >= 0) & (slices < stack.shape[0])
        if ok.sum() >= half:  # at least half the window must exist to compare
            scores[i] = float(corr[slices[ok], offsets[ok] + half].sum() / offsets.size)
    return int(candidates[int(np.argmax(scores))]), scores


def read_centre_overrides(path: Path) -> pd.DataFrame:
    """Read the manual centre list: subject_id, side, centre_slice (0-based, InstanceNumber order).

    Raises ValueError naming the file and column or row when malformed.
    """
    frame = pd.read_csv(path, dtype={"subject_id": str, "side": str})
    missing = [c for c in ("subject_id", "side", "centre_slice") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: manual centre list lacks column(s) {missing}")
    frame["side"] = frame["side"].str.strip().str.lower()
    bad = frame[~frame["side"].isin(["left", "right"])]
    if len(bad):
        raise ValueError(
            f"{path}: side must be left or right (row {int(bad.index[0]) + 2}: {bad.iloc[0]['side']!r})"
        )
    values = pd.to_numeric(frame["centre_slice"], errors="coerce")
    if values.isna().any() or (values < 0).any() or (values % 1 != 0).any():
        row = int(np.flatnonzero((values.isna() | (values < 0) | (values % 1 != 0)).to_numpy())[0])
        value = frame["centre_slice"].iloc[row]
        raise ValueError(f"{path}: centre_slice must be a 0-based slice index (row {row + 2}: {value!r})")
    frame["centre_slice"] = values.astype(int)
    return frame


def centre_override(overrides: pd.DataFrame | None, subject_id: str, side: str) -> int | None:
    """The manual centre (series index) of one knee, or None when the list does not name it."""
    if overrides is None:
        return None
    rows = overrides[(overrides["subject_id"] == subject_id) & (overrides["side"] == side)]
    return None if rows.empty else int(rows.iloc[-1]["centre_slice"])
