"""Rigid (rotation + translation) 2D registration of one knee slice to a template, in millimetres.

Geometry: every slice is handled on a physical grid. A *pose* (rotation_deg, shift_row_mm,
shift_col_mm) maps canonical (template) coordinates to the raw slice: the point at ``p`` mm from
the canonical centre (row, col) lies in the raw slice at ``centre + R(theta) p + shift``, where the
raw centre is the middle of the field of view and R rotates the anatomy counter-clockwise as
displayed (row 0 at the top) for positive theta: the pose convention of docs/contracts.md, so the
parameters compare directly with the synthetic truth.

Two methods were compared by measurement (docs/preprocess.md): OpenCV's ECC maximisation
(`cv2.findTransformECC`, MOTION_EUCLIDEAN) after a phase-correlation translation start, and
SimpleITK's ImageRegistrationMethod (Euler2D, correlation metric, gradient descent, 2 levels).
ECC is the default: as accurate and several times faster on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORK_SPACING_MM = 1.0  # registration grid (the template's pixel size)


@dataclass(frozen=True)
class Pose:
    """Rigid pose of a raw slice relative to the canonical frame (see module docstring)."""

    rotation_deg: float = 0.0
    shift_row_mm: float = 0.0
    shift_col_mm: float = 0.0

    def matrix(self) -> np.ndarray:
        """2x3 affine (x=col, y=row, mm) taking canonical mm to raw mm around the centres.

        With rows pointing down, counter-clockwise on screen is the matrix [[c, s], [-s, c]] in (x, y).
        """
        a = np.deg2rad(self.rotation_deg)
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, s, self.shift_col_mm], [-s, c, self.shift_row_mm]])

    def inverse(self) -> Pose:
        """The pose that undoes this one (R^T, -R^T t)."""
        m = self.matrix()
        t = -m[:, :2].T @ m[:, 2]
        return Pose(-self.rotation_deg, float(t[1]), float(t[0]))


@dataclass(frozen=True)
class RegistrationResult:
    """A slice's estimated pose and how well it fits (correlation in [-1, 1]; converged flag).

    ``fallback`` marks a slice whose own estimate strayed from its knee's pose and was replaced by it.
    """

    pose: Pose
    correlation: float
    converged: bool
    fallback: bool = False


def resample(
    image: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    pose: Pose,
    out_shape: tuple[int, int],
    out_spacing_mm: float,
    out_centre_mm: tuple[float, float] = (0.0, 0.0),
    interpolation: int | None = None,
) -> np.ndarray:
    """Sample ``image`` on a canonical grid: ``out_shape`` pixels of ``out_spacing_mm``, centred at
    ``out_centre_mm`` (row, col) in the canonical frame, through ``pose``. One interpolation only."""
    import cv2

    sr, sc = spacing_rc_mm
    raw_centre = np.array([(image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0])  # x, y pixels
    out_centre_px = np.array([(out_shape[1] - 1) / 2.0, (out_shape[0] - 1) / 2.0])
    # output pixel -> canonical mm (x=col, y=row)
    to_mm = np.array(
        [
            [out_spacing_mm, 0.0, out_centre_mm[1] - out_centre_px[0] * out_spacing_mm],
            [0.0, out_spacing_mm, out_centre_mm[0] - out_centre_px[1] * out_spacing_mm],
            [0.0, 0.0, 1.0],
        ]
    )
    pose_h = np.vstack([pose.matrix(), [0.0, 0.0, 1.0]])
    to_px = np.array([[1.0 / sc, 0.0, raw_centre[0]], [0.0, 1.0 / sr, raw_centre[1]], [0.0, 0.0, 1.0]])
    warp = (to_px @ pose_h @ to_mm)[:2]
    flags = (cv2.INTER_LINEAR if interpolation is None else interpolation) | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(
        np.ascontiguousarray(image, dtype=np.float32),
        warp,
        (out_shape[1], out_shape[0]),
        flags=flags,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def _normalise(image: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: ECC and correlation are insensitive to scanner gain this way."""
    image = image.astype(np.float32)
    std = float(image.std())
    return (image - float(image.mean())) / (std if std > 0 else 1.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _normalise(a), _normalise(b)
    return float((a * b).mean())


def register_ecc(
    template: np.ndarray,
    image: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    start: Pose = Pose(),
    iterations: int = 60,
    pyramid: tuple[int, ...] = (2, 1),
) -> RegistrationResult:
    """Estimate the pose of raw ``image`` against ``template`` (canonical grid, WORK_SPACING_MM).

    The raw slice is first resampled onto the working grid (identity pose, a margin around the
    template's field) so ECC works in millimetres; a phase correlation gives the translation start.
    """
    import cv2

    th, tw = template.shape
    margin = 24  # mm of extra field so shifts up to this size stay inside the moving image
    moving_shape = (th + 2 * margin, tw + 2 * margin)
    moving = _normalise(resample(image, spacing_rc_mm, Pose(), moving_shape, WORK_SPACING_MM))
    # Pixels outside the raw field of view are not data: mask them so the FOV edge cannot pull ECC.
    inside = resample(
        np.ones_like(image, dtype=np.float32), spacing_rc_mm, Pose(), moving_shape, WORK_SPACING_MM
    )
    mask = (inside > 0.999).astype(np.uint8)
    fixed = _normalise(template)
    centre_offset = np.array([margin, margin], dtype=np.float64)  # template px -> moving px (x, y)

    # warp: template pixel (x, y) -> moving pixel; rotation about the template centre.
    warp = _pose_to_warp(start, template.shape, centre_offset)
    if start == Pose():
        inner = moving[margin : margin + th, margin : margin + tw]
        window = cv2.createHanningWindow((tw, th), cv2.CV_32F)
        # Copies: OpenCV 5.0's phaseCorrelate applies the window to its inputs in place.
        (dx, dy), _ = cv2.phaseCorrelate(fixed.copy(), inner.copy(), window)
        warp[:, 2] += (dx, dy)
    converged = True
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    for factor in pyramid:
        f = (
            cv2.resize(fixed, (tw // factor, th // factor), interpolation=cv2.INTER_AREA)
            if factor > 1
            else fixed
        )
        m = (
            cv2.resize(
                moving, (moving_shape[1] // factor, moving_shape[0] // factor), interpolation=cv2.INTER_AREA
            )
            if factor > 1
            else moving
        )
        level_mask = (
            cv2.resize(mask, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_NEAREST)
            if factor > 1
            else mask
        )
        level = warp.astype(np.float32).copy()
        level[:, 2] /= factor
        try:
            _, level = cv2.findTransformECC(f, m, level, cv2.MOTION_EUCLIDEAN, criteria, level_mask, 3)
        except cv2.error:
            converged = False
            break
        level[:, 2] *= factor
        warp = level.astype(np.float64)
    pose = _warp_to_pose(warp, template.shape, centre_offset)
    aligned = resample(image, spacing_rc_mm, pose, template.shape, WORK_SPACING_MM)
    return RegistrationResult(pose=pose, correlation=_correlation(aligned, template), converged=converged)


def _pose_to_warp(pose: Pose, shape: tuple[int, int], centre_offset: np.ndarray) -> np.ndarray:
    """Pose (mm, about the centre) -> 2x3 warp from template pixels to moving-grid pixels."""
    m = pose.matrix()
    rot = m[:, :2]
    centre = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    shift_px = m[:, 2] / WORK_SPACING_MM
    t = centre + centre_offset + shift_px - rot @ centre
    return np.hstack([rot, t[:, None]])


def _warp_to_pose(warp: np.ndarray, shape: tuple[int, int], centre_offset: np.ndarray) -> Pose:
    rot = warp[:, :2]
    centre = np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])
    shift_px = warp[:, 2] + rot @ centre - centre - centre_offset
    angle = float(np.rad2deg(np.arctan2(-rot[1, 0], rot[0, 0])))
    return Pose(angle, float(shift_px[1] * WORK_SPACING_MM), float(shift_px[0] * WORK_SPACING_MM))


def register_sitk(
    template: np.ndarray,
    image: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    start: Pose = Pose(),
    iterations: int = 100,
) -> RegistrationResult:
    """The SimpleITK alternative (Euler2D, correlation metric, 2-level pyramid), for comparison."""
    import SimpleITK as sitk  # noqa: N813 (the library's own documented alias)

    th, tw = template.shape
    fixed = sitk.GetImageFromArray(_normalise(template))
    fixed.SetSpacing((WORK_SPACING_MM, WORK_SPACING_MM))
    fixed.SetOrigin((-(tw - 1) / 2.0 * WORK_SPACING_MM, -(th - 1) / 2.0 * WORK_SPACING_MM))
    moving = sitk.GetImageFromArray(_normalise(image))
    sr, sc = spacing_rc_mm
    moving.SetSpacing((sc, sr))
    moving.SetOrigin((-(image.shape[1] - 1) / 2.0 * sc, -(image.shape[0] - 1) / 2.0 * sr))
    transform = sitk.Euler2DTransform()
    transform.SetAngle(-np.deg2rad(start.rotation_deg))  # ITK's angle turns clockwise on screen
    transform.SetTranslation((start.shift_col_mm, start.shift_row_mm))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
    )
    method.SetOptimizerScales([200.0, 1.0, 1.0])  # one radian weighs like 200 mm
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(fixed, moving)
        converged = True
    except RuntimeError:
        converged = False
    angle = -float(np.rad2deg(transform.GetAngle()))
    tx, ty = transform.GetTranslation()
    pose = Pose(angle, float(ty), float(tx))
    aligned = resample(image, spacing_rc_mm, pose, template.shape, WORK_SPACING_MM)
    return RegistrationResult(pose=pose, correlation=_correlation(aligned, template), converged=converged)


def register_stack(
    images: list[np.ndarray | None],
    templates: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    core_half: int,
    tolerance_mm: float,
    tolerance_deg: float,
    method: str = "ecc",
    smoothing: int = 7,
) -> tuple[Pose | None, list[RegistrationResult | None]]:
    """Register a knee's window of slices (None = missing) to the per-offset templates.

    The knee's pose is the median of the central slices' poses (offsets within ``core_half``),
    each found from a phase-correlation start. Every slice is then refined from the knee's pose;
    an estimate further than the tolerances from it (a slice with little anatomy, at the edge of
    the knee) is replaced by the knee's pose and marked ``fallback``. Finally each slice's pose is
    the running median over ``smoothing`` neighbouring slices. Returns (knee pose or None when no
    central slice registered, per-slice results).
    """
    register = {"ecc": register_ecc, "sitk": register_sitk}.get(method)
    if register is None:
        raise ValueError(f"unknown registration method {method!r} (expected 'ecc' or 'sitk')")
    half = len(images) // 2
    results: list[RegistrationResult | None] = [None] * len(images)
    core = [k for k in range(half - core_half, half + core_half + 1) if images[k] is not None]
    for k in core:
        results[k] = register(templates[k], images[k], spacing_rc_mm)
    usable = [r for k in core if (r := results[k]) is not None and r.converged]
    if not usable:
        return None, results
    knee = Pose(
        float(np.median([r.pose.rotation_deg for r in usable])),
        float(np.median([r.pose.shift_row_mm for r in usable])),
        float(np.median([r.pose.shift_col_mm for r in usable])),
    )
    for k, image in enumerate(images):
        if image is None:
            continue
        result = results[k] if k in core else register(templates[k], image, spacing_rc_mm, start=knee)
        strayed = (
            not result.converged
            or abs(result.pose.rotation_deg - knee.rotation_deg) > tolerance_deg
            or np.hypot(
                result.pose.shift_row_mm - knee.shift_row_mm, result.pose.shift_col_mm - knee.shift_col_mm
            )
            > tolerance_mm
        )
        if strayed:
            aligned = resample(image, spacing_rc_mm, knee, templates[k].shape, WORK_SPACING_MM)
            result = RegistrationResult(
                knee, _correlation(aligned, templates[k]), result.converged, fallback=True
            )
        results[k] = result
    return knee, _smooth_along_slices(results, images, templates, spacing_rc_mm, smoothing)


def _smooth_along_slices(
    results: list[RegistrationResult | None],
    images: list[np.ndarray | None],
    templates: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    window: int,
) -> list[RegistrationResult | None]:
    """Running median of the poses over ``window`` neighbouring slices (3 mm apart, the same rigid
    bone): it removes most of the single-slice estimation noise and keeps slow changes."""
    present = [k for k, r in enumerate(results) if r is not None]
    if window <= 1 or not present:
        return results
    poses = np.array([[r.pose.rotation_deg, r.pose.shift_row_mm, r.pose.shift_col_mm] for r in results if r])
    smoothed: list[RegistrationResult | None] = list(results)
    for i, k in enumerate(present):
        lo, hi = max(0, i - window // 2), min(len(present), i + window // 2 + 1)
        pose = Pose(*(float(v) for v in np.median(poses[lo:hi], axis=0)))
        aligned = resample(images[k], spacing_rc_mm, pose, templates[k].shape, WORK_SPACING_MM)
        own = results[k]
        smoothed[k] = RegistrationResult(
            pose, _correlation(aligned, templates[k]), own.converged, own.fallback
        )
    return smoothed
