"""Registration templates built from the cohort itself: one 1 mm image per slice offset (23).

The paper registered every slice to slice 18 of one hand-picked subject. A single subject's
anatomy biases the frame, so the templates here are a groupwise average of the first
``template_subjects`` knee pairs (sorted ids, so every shard builds the same template):
1. each knee's window around its centre slice, sampled with no alignment, is averaged per offset;
2. twice: every slice is registered (ECC) to its offset's template and the aligned slices averaged
   (pixel-wise median, so knees with artifacts do not print into the template);
3. each offset's template is moved by the group's median pose at that offset, so that pose
   becomes zero: the frame is the group's average position (not that of any one knee), and the
   same for all offsets. With n knees the frame's offset from the true anatomical frame shrinks
   like the spread of poses / sqrt(n); the median keeps a few failed registrations out.
The templates are stored as ``WORK/preprocess/template.npy`` and pinned in config.json by hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kneepain.preprocess.registration import WORK_SPACING_MM, Pose, register_ecc, resample
from kneepain.preprocess.series_io import KneeVolume

ROUNDS = 2


def build_templates(
    knees: Sequence[tuple[KneeVolume, int]], half: int, field_px: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Templates (2 half + 1, field, field) float32 from (volume, centre lateral index) pairs.

    Returns the templates and, per round, each offset's median pose [deg, row mm, col mm] in the group.
    Raises ValueError when no knee has a full window.
    """
    usable = [(v, c) for v, c in knees if c - half >= 0 and c + half < v.n_slices]
    if not usable:
        raise ValueError("no knee with a full slice window to build the registration template from")
    shape = (field_px, field_px)
    offsets = range(-half, half + 1)

    def sample(volume: KneeVolume, index: int, pose: Pose) -> np.ndarray:
        image = resample(
            volume.voxels[index], (volume.spacing_row_mm, volume.spacing_col_mm), pose, shape, WORK_SPACING_MM
        )
        return (image - image.mean()) / max(float(image.std()), 1e-6)

    templates = np.stack(
        [np.median([sample(v, c + j, Pose()) for v, c in usable], axis=0) for j in offsets]
    ).astype(np.float32)
    history = []
    for _ in range(ROUNDS):
        aligned = np.zeros((len(offsets), len(usable), *shape), dtype=np.float32)
        poses = np.zeros((len(offsets), len(usable), 3))
        for i, (volume, centre) in enumerate(usable):
            spacing = (volume.spacing_row_mm, volume.spacing_col_mm)
            for k, j in enumerate(offsets):
                result = register_ecc(templates[k], volume.voxels[centre + j], spacing)
                poses[k, i] = [result.pose.rotation_deg, result.pose.shift_row_mm, result.pose.shift_col_mm]
                aligned[k, i] = sample(volume, centre + j, result.pose)
        # Median, not mean: a knee with an artifact (metal, ghosting) must not print into the template.
        templates = np.median(aligned, axis=1)
        # Re-centre each offset's template through the inverse of a pose: a knee's new pose is its
        # old pose composed with that inverse. The pose per offset is the group's median knee pose
        # (the frame: the group's average position) plus the offset's median departure from each
        # knee's own pose (a knee has one pose for all slices, so this aligns the 23 frames with
        # each other using within-knee differences, which do not carry the spread of poses).
        knee_poses = np.median(poses, axis=0)  # (knees, 3)
        relative = np.median(poses - knee_poses[None], axis=1)  # (offsets, 3)
        centre_poses = relative + np.median(knee_poses, axis=0)[None]
        history.append(centre_poses)
        templates = np.stack(
            [
                resample(t, (1.0, 1.0), Pose(*map(float, m)).inverse(), shape, WORK_SPACING_MM)
                for t, m in zip(templates, centre_poses, strict=True)
            ]
        )
    return templates.astype(np.float32), history


def window_on_grid(volume: KneeVolume, centre: int, half: int, field_px: int) -> tuple[KneeVolume, int]:
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
    return small, centre - lo
