"""Registration templates built from the cohort itself: one 1 mm image per slice offset (23).

The paper registered every slice to slice 18 of one hand-picked subject. A single subject's
anatomy and position fix the frame, so here the templates are an *unbiased* groupwise average
of the first ``template_subjects`` knee pairs (sorted ids, so every shard builds the same one),
built the way unbiased atlases are:

1. each knee's window around its first centre guess, sampled with no alignment, is averaged
   (pixel-wise median) per offset: a blurred start;
2. every round, each knee's centre slice is matched again against the current templates and the
   knee is fitted to them (affine ECC of its central slices, the knee's fit is their element-wise
   median); the group's mean fit ``M`` is the current template frame's departure from the
   group's average position, size and shape;
3. the new templates are the pixel-wise median of every knee's slices resampled through its fit
   composed with ``M``'s inverse, so the knees' fits to the new templates average to the identity
   (exactly, as composition is linear in the fit): the frame is the group's mean pose, not any
   one knee's; the median keeps knees with artifacts from printing into the template;
4. rounds repeat until the ``M`` removed is within 0.25 mm / 0.25 degrees / 0.5% scale of the
   identity (what is left after that is an order of magnitude smaller), at most three;
5. ``frame="anatomical"``: the tibial plateau and eminence are found in the result
   (``landmarks.py``). The templates stay in the group's frame, where the knees lie on average,
   so each knee's registration starts near its answer; the frame (``frame_pose`` in the
   configuration) is composed with every knee's registered pose before the crop, so the cache's
   plateau is level and its centre lies above the eminence; the height stays the group's. When
   the landmarks are not found the group's frame is kept and the reason recorded. (Up to
   configuration 7 the templates themselves were resampled into the frame.)

One fit per knee (not per slice) aligns all 23 offsets with the same map, so the 23 template
frames agree by construction. With n knees whose poses scatter by s, the frame sits about s /
sqrt(n) from the population's mean pose: a sampling error no data-derived frame avoids
(docs/preprocess.md). The templates are stored as ``WORK/preprocess/template.npy``, pinned in
config.json by hash, and their construction record in ``template.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kneepain.preprocess.centre_slice import match_centre
from kneepain.preprocess.landmarks import AnatomicalFrame, find_anatomical_frame
from kneepain.preprocess.registration import (
    WORK_SPACING_MM,
    Pose,
    as_matrix,
    compose,
    invert,
    register_ecc,
    resample,
)
from kneepain.preprocess.series_io import KneeVolume

MAX_ROUNDS = 3
# A round that removes less than this leaves a far smaller bias still (on 78 synthetic knees the
# second round removed 0.15 deg / 0.08 mm / 0.3% scale and a third would have removed 0.02 deg /
# 0.015 mm / 0.08%), so the rounds stop there.
CONVERGED_MM, CONVERGED_DEG, CONVERGED_SCALE = 0.25, 0.25, 0.005
FRAMES = ("anatomical", "group_mean")
OUTLIER_MADS = 5.0  # a knee whose fit departs this many robust SDs from the group is left out

MapFunction = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]


@dataclass
class TemplateKnee:
    """A knee's slice window on the 1 mm grid (with ``search`` extra slices either side where the
    series has them) and the index in it of the current centre guess."""

    volume: KneeVolume
    centre: int


def fit_knee(
    task: tuple[TemplateKnee, np.ndarray, np.ndarray, int, int, str],
) -> tuple[int, np.ndarray | None]:
    """One knee against the current templates: (re-matched centre, the knee's 2x3 fit or None).

    ``task`` = (knee, templates, current fit, core_half, search, motion). A module-level
    function of one argument so a process pool can map it.
    """
    knee, templates, current, core_half, search, motion = task
    volume, half = knee.volume, templates.shape[0] // 2
    spacing = (volume.spacing_row_mm, volume.spacing_col_mm)
    field = templates.shape[-1]
    stack = np.stack([_sample(s, spacing, current, field) for s in volume.voxels])
    centre, _ = match_centre(stack, templates, knee.centre, search)
    # After the first round the knee's previous fit (re-centred) is close: refine it directly.
    start = Pose() if np.allclose(current, Pose().matrix()) else current
    fits = []
    for j in range(-core_half, core_half + 1):
        index = centre + j
        if 0 <= index < volume.n_slices:
            result = register_ecc(
                templates[half + j], volume.voxels[index], spacing, start, motion=motion, measure=False
            )
            if result.converged:
                fits.append(result.affine if result.affine is not None else result.pose.matrix())
    return centre, (np.median(fits, axis=0) if fits else None)


def build_templates(
    knees: Sequence[TemplateKnee],
    half: int,
    field_px: int,
    *,
    core_half: int = 5,
    search: int = 2,
    motion: str = "affine",
    rounds: int = MAX_ROUNDS,
    frame: str = "anatomical",
    map_function: MapFunction = map,
) -> tuple[np.ndarray, list[dict[str, Any]], AnatomicalFrame | None]:
    """Unbiased templates (2 half + 1, field, field) float32 from the knees' slice windows.

    ``map_function`` runs the per-knee fits (``map`` here, a process pool's ``map`` in the stage).
    Returns the templates; per round, the group's mean fit that the round removed
    (rotation_deg, shift_row_mm, shift_col_mm, scale) and the number of knees used; and, for
    ``frame="anatomical"``, the landmark frame applied (``found`` False: group frame kept).
    Raises ValueError when no knee has a full window or ``frame`` is unknown.
    """
    if frame not in FRAMES:
        raise ValueError(f"template frame {frame!r}: expected one of {FRAMES}")
    knees = [k for k in knees if k.centre - half >= 0 and k.centre + half < k.volume.n_slices]
    if not knees:
        raise ValueError("no knee with a full slice window to build the registration template from")
    identity = Pose().matrix()
    fits: list[np.ndarray | None] = [identity] * len(knees)
    templates = _median_template(knees, fits, half, field_px)
    history: list[dict[str, Any]] = []
    for _ in range(rounds):
        tasks = [
            (k, templates, identity if f is None else f, core_half, search, motion)
            for k, f in zip(knees, fits, strict=True)
        ]
        found = list(map_function(fit_knee, tasks))
        for knee, (centre, _) in zip(knees, found, strict=True):
            knee.centre = centre
        fits = _drop_outliers([fit for _, fit in found])
        kept = [f for f in fits if f is not None]
        if not kept:
            raise ValueError("no template knee could be registered to the initial template")
        mean = np.mean(kept, axis=0)
        undo = invert(mean)
        fits = [None if f is None else compose(f, undo) for f in fits]
        templates = _median_template(knees, fits, half, field_px)
        pose = Pose.from_matrix(mean)
        scale = float(np.sqrt(abs(np.linalg.det(mean[:, :2]))))
        history.append(
            {
                "rotation_deg": round(pose.rotation_deg, 4),
                "shift_row_mm": round(pose.shift_row_mm, 4),
                "shift_col_mm": round(pose.shift_col_mm, 4),
                "scale": round(scale, 5),
                "knees": len(kept),
            }
        )
        if (
            abs(pose.rotation_deg) < CONVERGED_DEG
            and np.hypot(pose.shift_row_mm, pose.shift_col_mm) < CONVERGED_MM
            and abs(scale - 1.0) < CONVERGED_SCALE
        ):
            break
    # The templates stay in the group's frame, where the knees lie on average: registration starts
    # each knee at the identity, and a template turned to level a steep mean tibial slope (7 deg on
    # the challenge phantom) started every knee that far off, so fits of knees that look unlike the
    # median (large effusions) stalled (configuration 7). The frame is applied after registration.
    anatomical = find_anatomical_frame(templates) if frame == "anatomical" else None
    return templates.astype(np.float32), history, anatomical


def frame_pose(templates: np.ndarray, frame: str) -> tuple[float, float, float]:
    """The anatomical frame in the templates' frame (rotation deg, shift row mm, shift col mm), or
    zero for the group's frame or when the landmarks are not found (the fallback)."""
    if frame != "anatomical":
        return (0.0, 0.0, 0.0)
    anatomical = find_anatomical_frame(templates)
    if not anatomical.found:
        return (0.0, 0.0, 0.0)
    return (anatomical.plateau_angle_deg, anatomical.shift_row_mm, anatomical.shift_col_mm)


def _sample(image: np.ndarray, spacing: tuple[float, float], fit: np.ndarray, field: int) -> np.ndarray:
    """A slice through a fit onto the template grid, normalised (zero mean, unit SD)."""
    sampled = resample(image, spacing, fit, (field, field), WORK_SPACING_MM)
    return (sampled - sampled.mean()) / max(float(sampled.std()), 1e-6)


def _median_template(
    knees: Sequence[TemplateKnee], fits: Sequence[np.ndarray | None], half: int, field: int
) -> np.ndarray:
    """Per offset, the pixel-wise median of the knees' slices through their fits (None: left out)."""
    used = [(k, f) for k, f in zip(knees, fits, strict=True) if f is not None]
    templates = np.empty((2 * half + 1, field, field), np.float32)
    for j in range(-half, half + 1):
        slices = []
        for knee, fit in used:
            index = knee.centre + j
            if 0 <= index < knee.volume.n_slices:
                spacing = (knee.volume.spacing_row_mm, knee.volume.spacing_col_mm)
                slices.append(_sample(knee.volume.voxels[index], spacing, as_matrix(fit), field))
        templates[j + half] = np.median(slices, axis=0) if slices else 0.0
    return templates


def _drop_outliers(fits: list[np.ndarray | None]) -> list[np.ndarray | None]:
    """Leave out fits far from the group (a failed registration must not move the frame)."""
    present = [f for f in fits if f is not None]
    if len(present) < 5:
        return fits
    vectors = np.array([[*_pose_vector(f), np.log(abs(np.linalg.det(f[:, :2])))] for f in present])
    centre = np.median(vectors, axis=0)
    spread = 1.4826 * np.median(np.abs(vectors - centre), axis=0)
    limit = OUTLIER_MADS * np.maximum(spread, [0.5, 0.5, 0.5, 0.01])
    kept = []
    for f in fits:
        if f is None:
            kept.append(None)
            continue
        vector = np.array([*_pose_vector(f), np.log(abs(np.linalg.det(f[:, :2])))])
        kept.append(f if np.all(np.abs(vector - centre) <= limit) else None)
    return kept


def _pose_vector(fit: np.ndarray) -> list[float]:
    pose = Pose.from_matrix(fit)
    return [pose.rotation_deg, pose.shift_row_mm, pose.shift_col_mm]


def window_on_grid(volume: KneeVolume, centre: int, half: int, field_px: int) -> TemplateKnee:
    """The knee's slice window (centre +/- half, where present) resampled to the 1 mm grid with no
    alignment; what template building needs, at a twentieth of the memory of the raw volume."""
    spacing = (volume.spacing_row_mm, volume.spacing_col_mm)
    lo, hi = max(0, centre - half), min(volume.n_slices, centre + half + 1)
    voxels = np.stack(
        [
            resample(volume.voxels[i], spacing, Pose(), (field_px, field_px), WORK_SPACING_MM)
            for i in range(lo, hi)
        ]
    )
    small = KneeVolume(
        voxels=voxels,
        spacing_row_mm=WORK_SPACING_MM,
        spacing_col_mm=WORK_SPACING_MM,
        slice_positions_mm=volume.slice_positions_mm[lo:hi],
        series_index=volume.series_index[lo:hi],
        side=volume.side,
        path=volume.path,
    )
    return TemplateKnee(small, centre - lo)
