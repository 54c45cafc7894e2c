"""Preprocess one knee (and one knee pair): centre slice, registration, crop, intensity, QC.

This is the unit the pipeline runs per subject and that ``predict`` reuses for a new person:
``preprocess_pair(left_dir, right_dir, config, templates=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kneepain.contracts import KNEES, N_SLICES
from kneepain.preprocess import quality
from kneepain.preprocess.centre_slice import aligned_stack, extent_centre, match_centre, start_pose
from kneepain.preprocess.config import PreprocessConfig
from kneepain.preprocess.crop import crop_slices, intensity_scale, to_uint8
from kneepain.preprocess.registration import Pose, RegistrationResult, compose, register_ecc, register_stack
from kneepain.preprocess.series_io import KneeVolume, SeriesError, read_knee_series


@dataclass
class KneeResult:
    """One knee's cache slices and everything recorded about how they were made."""

    side: str
    pixels: np.ndarray  # (23, size, size) uint8
    qc: quality.KneeQC
    n_slices: int = 0
    centre_series: int | None = None  # InstanceNumber order, 0-based
    centre_method: str = ""
    slice_series: list[int | None] = field(default_factory=list)  # per window position
    registrations: list[RegistrationResult | None] = field(default_factory=list)
    scale: float = 1.0


def preprocess_volume(
    volume: KneeVolume,
    config: PreprocessConfig,
    templates: np.ndarray | None,
    centre_series: int | None = None,
) -> KneeResult:
    """Preprocess one read knee volume; ``centre_series`` (InstanceNumber order) overrides detection."""
    half, size = config.half_slices, config.image_size
    qc = quality.KneeQC()
    spacing = (volume.spacing_row_mm, volume.spacing_col_mm)
    result = KneeResult(side=volume.side, pixels=np.zeros((N_SLICES, size, size), np.uint8), qc=qc)
    result.n_slices = volume.n_slices

    if not config.register:
        centre = config.no_register_first_slice + half
        method = "fixed (no registration)"
    elif centre_series is not None:
        if not 0 <= centre_series < volume.n_slices:
            qc.flag(
                "too_few_slices",
                f"manual centre {centre_series} outside the series' {volume.n_slices} slices",
            )
            return result
        centre = volume.to_lateral_index(centre_series)
        method = "manual"
    else:
        if templates is None:
            raise ValueError("registration needs templates (template.npy of the cache)")
        guess = min(max(extent_centre(volume), 0), volume.n_slices - 1)
        if config.version >= 4:
            guess, first = start_pose(
                volume, templates, guess, config.centre_search, config.registration_motion
            )
        else:  # caches and bundles of version <= 3 started from the guess itself
            first = register_ecc(
                templates[half],
                volume.voxels[guess],
                spacing,
                motion=config.registration_motion,
                measure=False,
            )
        stack = aligned_stack(
            volume, first.pose if first.affine is None else first.affine, templates.shape[-1]
        )
        centre, _ = match_centre(stack, templates, guess, config.centre_search)
        centre = min(max(centre, 0), volume.n_slices - 1)
        method = "detected"
    result.centre_method = method
    result.centre_series = int(volume.series_index[centre]) if 0 <= centre < volume.n_slices else None

    window = list(range(centre - half, centre + half + 1))
    valid = np.array([0 <= i < volume.n_slices for i in window])
    result.slice_series = [
        int(volume.series_index[i]) if ok else None for i, ok in zip(window, valid, strict=True)
    ]
    quality.check_window(volume.n_slices, centre, half, qc)
    quality.check_gaps(volume.slice_positions_mm, window, config.qc["gap_ratio"], qc)

    poses = [Pose()] * len(window)
    registrations: list[RegistrationResult | None] = [None] * len(window)
    if config.register:
        images = [
            volume.voxels[i] if ok and float(volume.voxels[i].std()) > 0 else None
            for i, ok in zip(window, valid, strict=True)
        ]
        knee_pose, registrations = register_stack(
            images,
            templates,
            spacing,
            config.knee_pose_half,
            config.slice_tolerance_mm,
            config.slice_tolerance_deg,
            config.method,
            config.pose_smoothing,
            config.registration_motion,
        )
        quality.check_registration(knee_pose, registrations, config.knee_pose_half, config.qc, qc)
        registrations = in_anatomical_frame(registrations, config.frame_pose)
        knee_pose = None if knee_pose is None else _in_frame(knee_pose, config.frame_pose)
        poses = [r.pose if r is not None else (knee_pose or Pose()) for r in registrations]
    result.registrations = registrations

    centre_images = [volume.voxels[i] for i in window[half - 1 : half + 2] if 0 <= i < volume.n_slices]
    quality.check_motion(centre_images, volume.spacing_col_mm, config.qc, qc)
    stack = crop_slices(volume.voxels, spacing, window, poses, config.crop_mm, size, config.crop_centre_mm)
    quality.check_blank(stack, valid, config.qc["blank_std_ratio"], qc)
    quality.check_contrast(stack, valid, config.crop_mm / size, config.qc, qc)
    result.scale = intensity_scale(stack[valid], config.intensity_percentile) if valid.any() else 1.0
    result.pixels = to_uint8(stack, result.scale)
    return result


def _in_frame(pose: Pose, frame: tuple[float, float, float]) -> Pose:
    """A pose found against the template (canonical to image) from the anatomical frame instead."""
    return Pose.from_matrix(compose(pose, Pose(*frame)))


def in_anatomical_frame(
    registrations: list[RegistrationResult | None], frame: tuple[float, float, float]
) -> list[RegistrationResult | None]:
    """Each slice's fit expressed from the anatomical frame (``frame_pose``: the frame in the
    template's frame); what the crop, registration.csv and the truth masks use. QC judged the fits
    against the template first, where a plausible pose is one near the cohort's mean."""
    if not any(frame):
        return registrations
    to_template = Pose(*frame)
    return [
        None
        if r is None
        else replace(
            r,
            pose=_in_frame(r.pose, frame),
            affine=None if r.affine is None else compose(r.affine, to_template),
        )
        for r in registrations
    ]


def preprocess_knee(
    folder: str | Path,
    side: str,
    config: PreprocessConfig,
    templates: np.ndarray | None,
    centre_series: int | None = None,
) -> KneeResult:
    """Read and preprocess one knee series; an unreadable series gives zero pixels and a QC reason."""
    try:
        volume = read_knee_series(folder, side)
    except SeriesError as error:
        qc = quality.KneeQC()
        qc.flag("unreadable_series", str(error))
        return KneeResult(
            side=side, pixels=np.zeros((N_SLICES, config.image_size, config.image_size), np.uint8), qc=qc
        )
    return preprocess_volume(volume, config, templates, centre_series)


def preprocess_pair(
    left_dir: str | Path,
    right_dir: str | Path,
    config: PreprocessConfig,
    *,
    templates: np.ndarray | None = None,
    centres: tuple[int | None, int | None] = (None, None),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Preprocess one person's knee pair into cache slices (2, 23, 224, 224) uint8 [left, right].

    ``templates`` are the cache's registration templates (``load_templates``), required unless
    ``config.register`` is False. ``centres`` optionally fixes each knee's centre slice
    (0-based, InstanceNumber order). The info dict holds per knee: qc_pass, qc_reason, centre
    slice and method, intensity scale and the per-slice registration parameters.
    """
    results = [
        preprocess_knee(folder, side, config, templates, centre)
        for folder, side, centre in zip((left_dir, right_dir), KNEES, centres, strict=True)
    ]
    pixels = np.stack([r.pixels for r in results])
    info = {r.side: knee_info(r) for r in results}
    return pixels, info


def knee_info(result: KneeResult) -> dict[str, Any]:
    """JSON-able summary of one knee: QC, centre, scale and per-slice registration rows."""
    half = len(result.slice_series) // 2 if result.slice_series else 0
    rows = []
    for k, (series, reg) in enumerate(
        zip(result.slice_series, result.registrations or [None] * len(result.slice_series), strict=True)
    ):
        rows.append(
            {
                "slice": k,
                "offset": k - half,
                "series_index": series,
                "rotation_deg": None if reg is None else round(reg.pose.rotation_deg, 4),
                "shift_row_mm": None if reg is None else round(reg.pose.shift_row_mm, 4),
                "shift_col_mm": None if reg is None else round(reg.pose.shift_col_mm, 4),
                "correlation": None if reg is None else round(reg.correlation, 4),
                "converged": None if reg is None else bool(reg.converged),
                "fallback": None if reg is None else bool(reg.fallback),
                "scale": None if reg is None else round(reg.scale, 4),
            }
        )
    return {
        "qc_pass": result.qc.passed,
        "qc_reason": result.qc.reason_text(),
        "flags": sorted(result.qc.reasons),
        "n_slices": result.n_slices,
        "centre_slice": result.centre_series,
        "centre_method": result.centre_method,
        "intensity_scale": result.scale,
        "registration": rows,
    }
