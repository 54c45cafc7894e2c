"""2D registration of one knee slice to a template, in millimetres; the pose kept is rigid.

Geometry: every slice is handled on a physical grid. A *pose* (rotation_deg, shift_row_mm,
shift_col_mm) maps canonical (template) coordinates to the raw slice: the point at ``p`` mm from
the canonical centre (row, col) lies in the raw slice at ``centre + R(theta) p + shift``, where the
raw centre is the middle of the field of view and R rotates the anatomy counter-clockwise as
displayed (row 0 at the top) for positive theta: the pose convention of docs/contracts.md, so the
parameters compare directly with the synthetic truth.

Fit model: knees differ in size. A rigid fit of a large knee to an average-sized template trades
rotation against translation to match the mismatched edges (on synthetic data the error grew
with bone size: 2-3 mm for the largest knees). So ECC fits a full affine map (``motion="affine"``:
a rigid start, then affine); the pose is its rigid part (the image of the canonical centre and the
nearest rotation), and the slice is still resampled rigidly (the paper's Euclidean transform:
the knee keeps its size in the cache). ``RegistrationResult.affine`` holds the full fit.

Two methods were compared by measurement (docs/preprocess.md): OpenCV's ECC maximisation
(`cv2.findTransformECC`) after a phase-correlation translation start, and SimpleITK's
ImageRegistrationMethod (Euler2D, correlation metric, gradient descent, 2 levels).
ECC is the default: as accurate and several times faster on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

WORK_SPACING_MM = 1.0  # registration grid (the template's pixel size)
MOVING_MARGIN_MM = 24  # extra field around the template so shifts up to this size stay inside
MOTIONS = ("rigid", "affine")


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
        return Pose.from_matrix(invert(self.matrix()))

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> Pose:
        """Rigid part of a 2x3 canonical-to-raw map: where the canonical centre goes and the
        rotation nearest to the linear part (exact for a rigid map, and unaffected by scale)."""
        m = np.asarray(matrix, dtype=float)
        angle = float(np.rad2deg(np.arctan2(m[0, 1] - m[1, 0], m[0, 0] + m[1, 1])))
        return cls(angle, float(m[1, 2]), float(m[0, 2]))


def as_matrix(transform: Pose | np.ndarray) -> np.ndarray:
    """A pose or a 2x3 matrix as a 2x3 float matrix (canonical mm -> raw mm, x=col, y=row)."""
    return transform.matrix() if isinstance(transform, Pose) else np.asarray(transform, dtype=float)


def compose(outer: Pose | np.ndarray, inner: Pose | np.ndarray) -> np.ndarray:
    """The map ``outer(inner(p))`` as a 2x3 matrix."""
    a, b = as_matrix(outer), as_matrix(inner)
    return np.hstack([a[:, :2] @ b[:, :2], (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]])


def invert(transform: Pose | np.ndarray) -> np.ndarray:
    """The inverse map of an invertible 2x3 matrix (or pose)."""
    m = as_matrix(transform)
    linear = np.linalg.inv(m[:, :2])
    return np.hstack([linear, (-linear @ m[:, 2])[:, None]])


@dataclass(frozen=True)
class RegistrationResult:
    """A slice's estimated pose and how well it fits (correlation in [-1, 1]; converged flag).

    ``fallback`` marks a slice whose own estimate strayed from its knee's pose and was replaced by
    it. ``affine`` is the full 2x3 fit whose rigid part is ``pose`` (None for a rigid method).
    """

    pose: Pose
    correlation: float
    converged: bool
    fallback: bool = False
    affine: np.ndarray | None = field(default=None, compare=False, repr=False)

    def fitted_map(self) -> np.ndarray:
        """The fit as a 2x3 map with ``pose`` as its rigid part: the affine's size and shape
        change about the canonical centre, then the pose (after smoothing, the smoothed pose)."""
        if self.affine is None:
            return self.pose.matrix()
        own = Pose.from_matrix(self.affine).matrix()[:, :2]
        shape = own.T @ self.affine[:, :2]  # what the fit adds to a rotation: scale and shear
        rigid = self.pose.matrix()
        return np.hstack([rigid[:, :2] @ shape, rigid[:, 2:]])

    @property
    def scale(self) -> float:
        """Size of the knee relative to the template (square root of the fit's area change)."""
        return 1.0 if self.affine is None else float(np.sqrt(abs(np.linalg.det(self.affine[:, :2]))))


def _grid_to_mm(shape: tuple[int, int], spacing_rc_mm: tuple[float, float]) -> np.ndarray:
    """3x3 map from pixel (x=col, y=row) to mm about the image's centre (the middle of the FOV)."""
    sr, sc = spacing_rc_mm
    return np.array(
        [[sc, 0.0, -(shape[1] - 1) / 2.0 * sc], [0.0, sr, -(shape[0] - 1) / 2.0 * sr], [0.0, 0.0, 1.0]]
    )


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def resample(
    image: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    pose: Pose | np.ndarray,
    out_shape: tuple[int, int],
    out_spacing_mm: float,
    out_centre_mm: tuple[float, float] = (0.0, 0.0),
    interpolation: int | None = None,
) -> np.ndarray:
    """Sample ``image`` on a canonical grid: ``out_shape`` pixels of ``out_spacing_mm``, centred at
    ``out_centre_mm`` (row, col) in the canonical frame, through ``pose`` (a Pose or a 2x3 map).
    One interpolation only."""
    import cv2

    to_mm = _grid_to_mm(out_shape, (out_spacing_mm, out_spacing_mm))
    to_mm[:2, 2] += (out_centre_mm[1], out_centre_mm[0])
    to_px = np.linalg.inv(_grid_to_mm(image.shape[:2], spacing_rc_mm))
    warp = (to_px @ _homogeneous(as_matrix(pose)) @ to_mm)[:2]
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


def fit_correlation(
    template: np.ndarray, image: np.ndarray, spacing_rc_mm: tuple[float, float], fit: Pose | np.ndarray
) -> float:
    """Correlation of the template with the raw slice resampled through ``fit`` (pose or 2x3 map)."""
    aligned = resample(image, spacing_rc_mm, fit, template.shape, WORK_SPACING_MM)
    return _correlation(aligned, template)


@dataclass(frozen=True)
class _WarpFrame:
    """The set-up every registration method shares: the raw slice on the 1 mm working grid (with
    a margin around the template's field), a mask of where it holds data, and the conversions
    between a canonical-to-raw map in mm and a warp from template pixels to working-grid pixels."""

    moving: np.ndarray
    mask: np.ndarray
    template_to_mm: np.ndarray
    moving_to_mm: np.ndarray

    @classmethod
    def make(
        cls, template_shape: tuple[int, int], image: np.ndarray, spacing_rc_mm: tuple[float, float]
    ) -> _WarpFrame:
        th, tw = template_shape
        shape = (th + 2 * MOVING_MARGIN_MM, tw + 2 * MOVING_MARGIN_MM)
        moving = _normalise(resample(image, spacing_rc_mm, Pose(), shape, WORK_SPACING_MM))
        return cls(
            moving=moving,
            mask=_inside_mask(tuple(image.shape[:2]), tuple(spacing_rc_mm), shape),
            template_to_mm=_grid_to_mm(template_shape, (WORK_SPACING_MM, WORK_SPACING_MM)),
            moving_to_mm=_grid_to_mm(shape, (WORK_SPACING_MM, WORK_SPACING_MM)),
        )

    def to_warp(self, transform: Pose | np.ndarray) -> np.ndarray:
        """Canonical-to-raw map (mm) -> 2x3 warp from template pixels to working-grid pixels."""
        return (np.linalg.inv(self.moving_to_mm) @ _homogeneous(as_matrix(transform)) @ self.template_to_mm)[
            :2
        ]

    def from_warp(self, warp: np.ndarray) -> np.ndarray:
        """Inverse of ``to_warp``."""
        return (self.moving_to_mm @ _homogeneous(warp) @ np.linalg.inv(self.template_to_mm))[:2]


@lru_cache(maxsize=8)
def _inside_mask(
    raw_shape: tuple[int, int], spacing_rc_mm: tuple[float, float], shape: tuple[int, int]
) -> np.ndarray:
    """Working-grid pixels inside the raw field of view (outside is not data: the FOV edge must
    not pull ECC). The same for every slice of a series, so it is computed once."""
    inside = resample(np.ones(raw_shape, np.float32), spacing_rc_mm, Pose(), shape, WORK_SPACING_MM)
    mask = (inside > 0.999).astype(np.uint8)
    mask.setflags(write=False)
    return mask


def register_ecc(
    template: np.ndarray,
    image: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    start: Pose | np.ndarray = Pose(),
    iterations: int = 6,
    pyramid: tuple[int, ...] = (2, 1),
    motion: str = "affine",
    measure: bool = True,
) -> RegistrationResult:
    """Estimate the pose of raw ``image`` against ``template`` (canonical grid, WORK_SPACING_MM).

    The raw slice is resampled onto the working grid so ECC works in millimetres. With the default
    ``start`` (identity) a phase correlation gives the translation start and, for ``motion=
    "affine"``, a rigid fit at the coarsest level precedes the affine levels; a given start (a pose
    or a 2x3 map, e.g. the knee's fit) is refined directly. ``measure=False`` skips computing the
    correlation (callers that smooth the poses compute it afterwards).
    """
    import cv2

    if motion not in MOTIONS:
        raise ValueError(f"unknown registration motion {motion!r} (expected one of {MOTIONS})")
    th, tw = template.shape
    frame = _WarpFrame.make(template.shape, image, spacing_rc_mm)
    fixed = _normalise(template)
    warp = frame.to_warp(start)
    starts = [warp]
    from_scratch = isinstance(start, Pose) and start == Pose()
    if from_scratch:
        m = MOVING_MARGIN_MM
        inner = frame.moving[m : m + th, m : m + tw]
        window = cv2.createHanningWindow((tw, th), cv2.CV_32F)
        # Copies: OpenCV 5.0's phaseCorrelate applies the window to its inputs in place.
        (dx, dy), _ = cv2.phaseCorrelate(fixed.copy(), inner.copy(), window)
        # Without a clear peak phaseCorrelate can return shifts far outside the image (seen: 250
        # mm); such a start is dropped, and a start that ECC cannot follow is retried from zero.
        if np.hypot(dx, dy) * WORK_SPACING_MM <= MOVING_MARGIN_MM:
            shifted = warp.copy()
            shifted[:, 2] += (dx, dy)
            starts.insert(0, shifted)
    stages = [(factor, cv2.MOTION_EUCLIDEAN) for factor in pyramid]
    if motion == "affine":
        stages = stages[:1] if from_scratch else []
        # From a given start (a neighbour's fit) the full-resolution level alone suffices.
        stages += [(factor, cv2.MOTION_AFFINE) for factor in (pyramid if from_scratch else pyramid[-1:])]
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-6)
    for first in starts:
        warp, converged = _run_ecc(fixed, frame, first, stages, criteria)
        if converged:
            break
    affine = frame.from_warp(warp)
    pose = Pose.from_matrix(affine)
    correlation = fit_correlation(template, image, spacing_rc_mm, affine) if measure else float("nan")
    return RegistrationResult(
        pose=pose, correlation=correlation, converged=converged, affine=affine if motion == "affine" else None
    )


def _run_ecc(
    fixed: np.ndarray,
    frame: _WarpFrame,
    warp: np.ndarray,
    stages: list[tuple[int, int]],
    criteria: tuple[int, int, float],
) -> tuple[np.ndarray, bool]:
    """ECC through (pyramid factor, motion) stages from ``warp``: (final warp, all stages converged)."""
    import cv2

    th, tw = fixed.shape
    for factor, kind in stages:
        if factor > 1:
            f = cv2.resize(fixed, (tw // factor, th // factor), interpolation=cv2.INTER_AREA)
            size = (frame.moving.shape[1] // factor, frame.moving.shape[0] // factor)
            m = cv2.resize(frame.moving, size, interpolation=cv2.INTER_AREA)
            level_mask = cv2.resize(frame.mask, size, interpolation=cv2.INTER_NEAREST)
        else:
            f, m, level_mask = fixed, frame.moving, frame.mask
        level = warp.astype(np.float32).copy()
        level[:, 2] /= factor
        try:
            _, level = cv2.findTransformECC(f, m, level, kind, criteria, level_mask, 3)
        except cv2.error:
            return warp, False
        level[:, 2] *= factor
        warp = level.astype(np.float64)
    return warp, True


def register_sitk(
    template: np.ndarray,
    image: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    start: Pose | np.ndarray = Pose(),
    iterations: int = 100,
    measure: bool = True,
) -> RegistrationResult:
    """The SimpleITK alternative (Euler2D, correlation metric, 2-level pyramid, rigid), for comparison."""
    import SimpleITK as sitk  # noqa: N813 (the library's own documented alias)

    start = start if isinstance(start, Pose) else Pose.from_matrix(start)
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
    correlation = fit_correlation(template, image, spacing_rc_mm, pose) if measure else float("nan")
    return RegistrationResult(pose=pose, correlation=correlation, converged=converged)


def register_stack(
    images: list[np.ndarray | None],
    templates: np.ndarray,
    spacing_rc_mm: tuple[float, float],
    core_half: int,
    tolerance_mm: float,
    tolerance_deg: float,
    method: str = "ecc",
    smoothing: int = 7,
    motion: str = "affine",
) -> tuple[Pose | None, list[RegistrationResult | None]]:
    """Register a knee's window of slices (None = missing) to the per-offset templates.

    The knee's pose is the median of the central slices' poses (offsets within ``core_half``),
    each found from a phase-correlation start (its full fit: the element-wise median of their
    affine maps). Every other slice is refined from the knee's fit; an estimate further than the
    tolerances from the knee's pose (a slice with little anatomy, at the edge of the knee) is
    replaced by the knee's pose and marked ``fallback``. Finally each slice's pose is the running
    median over ``smoothing`` neighbouring slices. Returns (knee pose or None when no central
    slice registered, per-slice results with their correlation to the template).
    """
    if method == "ecc":

        def register(template: np.ndarray, image: np.ndarray, start: Pose | np.ndarray) -> RegistrationResult:
            return register_ecc(template, image, spacing_rc_mm, start=start, motion=motion, measure=False)

    elif method == "sitk":

        def register(template: np.ndarray, image: np.ndarray, start: Pose | np.ndarray) -> RegistrationResult:
            return register_sitk(template, image, spacing_rc_mm, start=start, measure=False)

    else:
        raise ValueError(f"unknown registration method {method!r} (expected 'ecc' or 'sitk')")
    half = len(images) // 2
    results: list[RegistrationResult | None] = [None] * len(images)
    core = [k for k in range(half - core_half, half + core_half + 1) if images[k] is not None]
    for k in core:
        results[k] = register(templates[k], images[k], Pose())
    usable = [r for k in core if (r := results[k]) is not None and r.converged]
    if not usable:
        return None, _measured(results, images, templates, spacing_rc_mm)
    knee = Pose(*(float(v) for v in np.median([_pose_vector(r.pose) for r in usable], axis=0)))
    fits = [r.affine for r in usable if r.affine is not None]
    knee_fit = np.median(fits, axis=0) if fits else knee.matrix()
    for k, image in enumerate(images):
        if image is None:
            continue
        result = results[k] if k in core else register(templates[k], image, knee_fit)
        strayed = (
            not result.converged
            or abs(result.pose.rotation_deg - knee.rotation_deg) > tolerance_deg
            or np.hypot(
                result.pose.shift_row_mm - knee.shift_row_mm, result.pose.shift_col_mm - knee.shift_col_mm
            )
            > tolerance_mm
        )
        if strayed:
            result = RegistrationResult(knee, float("nan"), result.converged, fallback=True, affine=knee_fit)
        results[k] = result
    smoothed = _smooth_along_slices(results, smoothing)
    return knee, _measured(smoothed, images, templates, spacing_rc_mm)


def _pose_vector(pose: Pose) -> list[float]:
    return [pose.rotation_deg, pose.shift_row_mm, pose.shift_col_mm]


def _smooth_along_slices(
    results: list[RegistrationResult | None], window: int
) -> list[RegistrationResult | None]:
    """Running median of the poses over ``window`` neighbouring slices (3 mm apart, the same rigid
    bone): it removes most of the single-slice estimation noise and keeps slow changes."""
    present = [k for k, r in enumerate(results) if r is not None]
    if window <= 1 or not present:
        return results
    poses = np.array([_pose_vector(r.pose) for r in results if r is not None])
    smoothed: list[RegistrationResult | None] = list(results)
    for i, k in enumerate(present):
        lo, hi = max(0, i - window // 2), min(len(present), i + window // 2 + 1)
        own = results[k]
        pose = Pose(*(float(v) for v in np.median(poses[lo:hi], axis=0)))
        smoothed[k] = RegistrationResult(pose, own.correlation, own.converged, own.fallback, own.affine)
    return smoothed


def _measured(
    results: list[RegistrationResult | None],
    images: list[np.ndarray | None],
    templates: np.ndarray,
    spacing_rc_mm: tuple[float, float],
) -> list[RegistrationResult | None]:
    """Each result with the correlation of its final fit, computed once at the end."""
    return [
        None
        if r is None
        else RegistrationResult(
            r.pose,
            fit_correlation(templates[k], images[k], spacing_rc_mm, r.fitted_map()),
            r.converged,
            r.fallback,
            r.affine,
        )
        for k, r in enumerate(results)
    ]
