"""Automatic quality flags per knee, and the manual list that overrides them.

Flags (each with a reason string that goes on record):
- ``unreadable_series``: the series folder could not be read as one sagittal knee.
- ``too_few_slices``: fewer than 11 slices on either side of the centre slice.
- ``missing_slices``: a gap in slice positions (> gap_ratio x the usual spacing) inside the window.
- ``blank_slices``: a slice in the window with almost no signal variation.
- ``registration_failed``: ECC did not converge, the fit is poor, or the pose is implausible.
- ``misalignment``: more than ``max_fallback_slices`` slices depart from their knee's pose (motion
  within the scan).
- ``motion``: ghost copies of the anatomy along the phase-encoding (column) direction.
- ``foreign_object``: a large region without signal (at the noise floor) inside the knee: metal, or
  tissue clipped to nothing by a contrast artifact.
- ``high_contrast``: a sub-region far brighter than the knee's brightest tissue (fluid, or fat
  without fat suppression).

The limits are ``PreprocessConfig.qc``; docs/preprocess.md (step 6) gives each rule's quantity,
default and why it should not depend on pain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.preprocess.registration import Pose, RegistrationResult

FLAGS = (
    "unreadable_series",
    "too_few_slices",
    "missing_slices",
    "blank_slices",
    "registration_failed",
    "misalignment",
    "motion",
    "foreign_object",
    "high_contrast",
)


@dataclass
class KneeQC:
    """QC outcome of one knee: the flags raised with their reasons."""

    reasons: dict[str, str] = field(default_factory=dict)

    def flag(self, name: str, reason: str) -> None:
        if name not in FLAGS:
            raise ValueError(f"unknown QC flag {name!r}")
        self.reasons.setdefault(name, reason)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def reason_text(self) -> str:
        return "; ".join(f"{name}: {text}" for name, text in self.reasons.items())


def check_window(n_slices: int, centre: int, half: int, qc: KneeQC) -> None:
    """Flag a centre without ``half`` slices on both sides."""
    below, above = centre, n_slices - 1 - centre
    if below < half or above < half:
        qc.flag(
            "too_few_slices",
            f"{n_slices} slices, centre {centre}: {below} medial / {above} lateral, need {half}",
        )


def check_gaps(positions_mm: np.ndarray, window: Sequence[int], gap_ratio: float, qc: KneeQC) -> None:
    """Flag missing slices: a step between neighbours much larger than the series' usual spacing."""
    if positions_mm.size < 3:
        return
    steps = np.diff(positions_mm)
    usual = float(np.median(steps))
    lo = max(min(window), 0)
    hi = min(max(window), positions_mm.size - 1)
    inside = steps[lo:hi]
    if usual > 0 and inside.size and float(inside.max()) > gap_ratio * usual:
        at = lo + int(np.argmax(inside))
        qc.flag("missing_slices", f"gap of {inside.max():.1f} mm after slice {at} (usual {usual:.1f} mm)")


def check_blank(stack: np.ndarray, valid: np.ndarray, std_ratio: float, qc: KneeQC) -> None:
    """Flag slices whose standard deviation is a small fraction of the knee's typical slice."""
    stds = stack.reshape(stack.shape[0], -1).std(axis=1)
    typical = float(np.median(stds[valid])) if valid.any() else 0.0
    blank = np.flatnonzero(valid & (stds < std_ratio * typical)) if typical > 0 else np.flatnonzero(valid)
    if blank.size:
        qc.flag("blank_slices", f"{blank.size} blank slice(s) at window position(s) {blank.tolist()[:5]}")


def check_registration(
    knee_pose: Pose | None,
    results: Sequence[RegistrationResult | None],
    core_half: int,
    limits: dict[str, float],
    qc: KneeQC,
) -> None:
    """Flag divergence (no knee pose, poor fit of the central slices, implausible pose) and slices
    that would not follow the knee's pose (misalignment within the scan, e.g. motion)."""
    half = len(results) // 2
    core = [r for r in results[half - core_half : half + core_half + 1] if r is not None]
    if knee_pose is None:
        if core:
            qc.flag("registration_failed", "no central slice converged")
        return
    fit = float(np.median([r.correlation for r in core])) if core else 0.0
    shift = float(np.hypot(knee_pose.shift_row_mm, knee_pose.shift_col_mm))
    if fit < limits["min_correlation"]:
        qc.flag(
            "registration_failed", f"central slices fit the template poorly (median correlation {fit:.2f})"
        )
    elif abs(knee_pose.rotation_deg) > limits["max_rotation_deg"] or shift > limits["max_shift_mm"]:
        qc.flag(
            "registration_failed",
            f"implausible pose {knee_pose.rotation_deg:.1f} deg, {shift:.1f} mm (diverged)",
        )
    fallbacks = sum(1 for r in results if r is not None and r.fallback)
    if fallbacks > limits["max_fallback_slices"]:
        qc.flag("misalignment", f"{fallbacks} slice(s) would not align with the knee's pose")


def ghosting_score(
    image: np.ndarray, spacing_col_mm: float, blur_mm: float = 0.0, min_lag_mm: float = 10.0
) -> float:
    """Height of the largest autocorrelation peak of the column-derivative image beyond ``min_lag_mm``.

    Motion during a scan repeats the anatomy at a fixed distance along the phase-encoding
    (column) direction. Edges (the derivative) decorrelate within a few millimetres in normal
    anatomy, so their autocorrelation is near 0 at long lags, while a ghost copy gives a sharp
    peak at its distance whose height is the ghost's relative strength.

    ``blur_mm``: the image is smoothed first (Gaussian, this SD) so that the derivative measures
    the anatomy's edges, not the noise. Noise is white: it has no ghost, but its derivative adds
    to the lag-0 energy, so an unsmoothed score falls with the series' signal-to-noise ratio and a
    noisy scanner would hide its ghosts. Anatomical edges (cortex, cartilage, fat planes) are
    1 mm and wider, while the noise's derivative lives at the pixel scale (0.3-0.5 mm).
    """
    import scipy.fft
    from scipy import ndimage

    pixels = image.astype(np.float32)
    if blur_mm > 0:
        pixels = ndimage.gaussian_filter(pixels, blur_mm / spacing_col_mm)
    edges = np.diff(pixels[::2], axis=1)  # every other row: 4x less work, same peak
    edges -= edges.mean(axis=1, keepdims=True)
    n = edges.shape[1]
    spectrum = scipy.fft.rfft(edges, n=scipy.fft.next_fast_len(2 * n, real=True), axis=1)
    ac = scipy.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :n].sum(axis=0)
    if ac[0] <= 0:
        return 0.0
    first = max(2, int(min_lag_mm / spacing_col_mm))
    return float(ac[first : n // 2].max() / ac[0])


def check_motion(
    images: Sequence[np.ndarray], spacing_col_mm: float, limits: dict[str, float], qc: KneeQC
) -> None:
    """Flag ghosting when the median ghosting score of the given (central) slices is high.

    ``limits["ghost_blur_mm"]`` is absent from configurations before version 7 (no smoothing),
    so a bundle preprocessed with one keeps its own rule.
    """
    if not images:
        return
    blur_mm = limits.get("ghost_blur_mm", 0.0)
    score = float(np.median([ghosting_score(image, spacing_col_mm, blur_mm) for image in images]))
    threshold = limits["ghosting"]
    if score > threshold:
        qc.flag("motion", f"ghosting along the phase direction (score {score:.2f} > {threshold:g})")


def check_contrast(
    stack: np.ndarray, valid: np.ndarray, spacing_mm: float, limits: dict[str, float], qc: KneeQC
) -> None:
    """Flag a bright sub-region (high contrast) or a large signal void inside the knee (foreign object).

    High contrast is measured against the knee's brightest tissue, not its average tissue: the
    reference is the median over the window's slices of each slice's 99.8th percentile, which
    is the fluid (or, without fat suppression, fat) level of that knee. Fluid is the brightest
    tissue of an intermediate/T2-weighted series whatever its amount, so a knee with a large
    effusion is not brighter than its reference; a region whose contrast was amplified is (its
    bright tissue goes beyond ``bright_ratio`` x the brightest tissue). A median over slices is
    not moved by an artifact confined to a few slices.

    A void is measured against the series' own noise, not against its tissue: metal leaves no
    signal at all, so its magnitude is the noise floor (the mean of Rayleigh noise, 1.25 sigma),
    the level of air outside the body whatever the sequence. Tissue that is dark by contrast
    (fat and marrow under fat suppression, muscle on T2) still has signal above the floor, and
    its level relative to the brightest tissue changes with the sequence, so a tissue-relative
    level misses metal in fat-suppressed knees (their fat is at 0.11-0.16 of full scale). A
    region whose local mean is below ``void_snr`` x the noise SD (see ``noise_sd``) holds no
    measurable signal. Contrast stretched about a region's mean clips its darker tissue to
    zero, which is the same lost signal, and is caught by the same measure. Limits without
    ``void_snr`` (caches and bundles of configuration version <= 5) keep the tissue-relative
    rule they were made with.
    """
    if not valid.any():
        return
    tissue = stack[valid]
    sample = tissue[:, ::2, ::2]
    reference = float(np.percentile(sample[sample > 0], 95)) if np.any(sample > 0) else 0.0
    if reference <= 0:
        return
    pixel_area = spacing_mm**2
    brightest = float(np.median(np.percentile(tissue.reshape(tissue.shape[0], -1), 99.8, axis=1)))
    bright = tissue > limits["bright_ratio"] * brightest
    bright_area = bright.reshape(bright.shape[0], -1).sum(axis=1).max() * pixel_area
    if brightest > 0 and bright_area > limits["bright_area_mm2"]:
        qc.flag(
            "high_contrast",
            f"{bright_area:.0f} mm2 brighter than {limits['bright_ratio']:g}x the knee's brightest tissue",
        )
    # A void: a region without signal too thick for normal dark anatomy (cortex, tendons, menisci,
    # the PCL are at most ~7 mm thick), enclosed by the knee (air outside the leg does not count).
    if "void_snr" in limits:
        noise = noise_sd(tissue)
        area = largest_signal_void_mm2(tissue, noise, spacing_mm, limits["void_snr"], limits["void_width_mm"])
        if area > limits["dark_area_mm2"]:
            qc.flag(
                "foreign_object",
                f"signal void of {area:.0f} mm2 inside the knee (below {limits['void_snr']:g}x "
                f"the noise SD {noise:.3g})",
            )
        return
    area = largest_void_mm2(tissue, reference, spacing_mm, limits["void_level"], limits["void_width_mm"])
    if area > limits["dark_area_mm2"]:
        qc.flag("foreign_object", f"signal void of {area:.0f} mm2 inside the knee")


def noise_sd(stack: np.ndarray, lag: int = 2) -> float:
    """Noise SD of a window as it appears in its crop: the median over slices of a robust SD
    (1.4826 x median absolute deviation / sqrt 2) of differences between pixels ``lag`` apart.

    Noise is independent from pixel to pixel while anatomy is smooth over a millimetre, so the
    median of such differences measures the noise, not the tissue; pixels 2 apart (about 1 mm
    in the crop) share no raw pixel through the crop's bilinear interpolation when the raw pixels
    are under ~0.47 mm (OAI: 0.36 mm), while neighbours would, shrinking their difference. The
    crop's interpolation still averages noise, so this is the noise as seen in the crop (about
    0.87 x the SD of the raw air on one phantom knee). Zeros (outside the scanned field) are left out.
    """
    values = []
    for image in stack[::2]:
        inside = image > 0
        pairs = [
            (image[:, lag:] - image[:, :-lag])[inside[:, lag:] & inside[:, :-lag]],
            (image[lag:] - image[:-lag])[inside[lag:] & inside[:-lag]],
        ]
        diffs = np.abs(np.concatenate(pairs))
        if diffs.size:
            values.append(float(np.median(diffs)) * 1.4826 / np.sqrt(2.0))
    return float(np.median(values)) if values else 0.0


def largest_signal_void_mm2(
    stack: np.ndarray, noise: float, spacing_mm: float, snr: float, width_mm: float
) -> float:
    """Largest area (mm2, in one slice) whose local mean is below ``snr x noise`` (no signal),
    that is not connected to the image edge or to unscanned (zero) pixels, and that survives a
    morphological opening with a disk at most ``width_mm`` wide; half resolution, every slice.

    The body outline is what has signal: a void touching the edge is air outside the leg (or
    outside the crop), whatever the brightness of the fat between, so no tissue must be bright.
    """
    import cv2
    from scipy import ndimage

    if noise <= 0:
        return 0.0
    spacing_mm *= 2
    size = max(3, (int(width_mm / spacing_mm) - 1) | 1)  # the widest odd disk not wider than width_mm
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    largest = 0.0
    for image in stack:  # every slice: a void 3 slices thick is widest on one
        half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
        smooth = cv2.GaussianBlur(half, (0, 0), 0.7)  # a local mean over ~2 mm
        unscanned = cv2.morphologyEx((half <= 0).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        empty = (smooth < snr * noise) | unscanned.astype(bool)
        labels, _ = ndimage.label(empty)
        edge = np.zeros_like(empty)
        edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
        outside = np.unique(np.concatenate([labels[edge & empty], labels[unscanned.astype(bool)]]))
        void = empty & ~np.isin(labels, outside) & ~unscanned.astype(bool)
        opened = cv2.morphologyEx(void.astype(np.uint8), cv2.MORPH_OPEN, disk)
        count, _, stats, _ = cv2.connectedComponentsWithStats(opened)
        if count > 1:
            largest = max(largest, float(stats[1:, cv2.CC_STAT_AREA].max()) * spacing_mm**2)
    return largest


def largest_void_mm2(
    stack: np.ndarray, reference: float, spacing_mm: float, level: float, width_mm: float
) -> float:
    """Largest area (mm2, in one slice) of signal below ``level x reference`` that survives a
    morphological opening with a disk about ``width_mm`` wide (an odd number of pixels) and lies
    inside the filled knee outline; measured at half resolution on every other slice.

    The rule of configuration versions <= 5 (tissue-relative; misses metal in fat-suppressed
    knees, see ``check_contrast``), kept so their caches and bundles decide as they did.
    """
    import cv2

    # Half resolution and every other slice: a foreign object spans several slices and > 10 mm.
    spacing_mm *= 2
    size = max(3, round(width_mm / spacing_mm) | 1)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    largest = 0.0
    for image in stack[::2]:
        half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
        smooth = cv2.GaussianBlur(half, (0, 0), 0.7)
        outline = _fill_holes(smooth > 0.2 * reference)
        dark = ((smooth < level * reference) & outline).astype(np.uint8)
        opened = cv2.morphologyEx(dark, cv2.MORPH_OPEN, disk)
        count, _, stats, _ = cv2.connectedComponentsWithStats(opened)
        if count > 1:
            largest = max(largest, float(stats[1:, cv2.CC_STAT_AREA].max()) * spacing_mm**2)
    return largest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Foreground with its enclosed holes filled (flood fill from the border)."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(mask.astype(bool))


def read_qc_overrides(path: Path) -> pd.DataFrame:
    """Read the manual QC list: columns subject_id, side (left/right/both), qc_pass (true/false), note.

    Raises ValueError naming the file, column or row when it is malformed.
    """
    frame = pd.read_csv(path, dtype={"subject_id": str, "side": str, "note": str})
    missing = [c for c in ("subject_id", "side", "qc_pass") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: QC override list lacks column(s) {missing}")
    frame["side"] = frame["side"].fillna("both").str.strip().str.lower()
    bad = frame[~frame["side"].isin(["left", "right", "both"])]
    if len(bad):
        raise ValueError(
            f"{path}: side must be left, right or both (row {int(bad.index[0]) + 2}: {bad.iloc[0]['side']!r})"
        )
    text = frame["qc_pass"].astype(str).str.strip().str.lower()
    truthy, falsy = {"true", "1", "yes", "pass"}, {"false", "0", "no", "fail"}
    unknown = ~text.isin(truthy | falsy)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise ValueError(
            f"{path}: qc_pass must be true/false (row {row + 2}: {frame['qc_pass'].iloc[row]!r})"
        )
    frame["qc_pass"] = text.isin(truthy)
    if "note" not in frame.columns:
        frame["note"] = ""
    frame["note"] = frame["note"].fillna("")
    return frame


def override_for(overrides: pd.DataFrame | None, subject_id: str, side: str) -> tuple[bool, str] | None:
    """The manual decision (qc_pass, note) for one knee, or None when the list does not name it."""
    if overrides is None:
        return None
    rows = overrides[(overrides["subject_id"] == subject_id) & overrides["side"].isin([side, "both"])]
    if rows.empty:
        return None
    last = rows.iloc[-1]
    return bool(last["qc_pass"]), str(last["note"])
