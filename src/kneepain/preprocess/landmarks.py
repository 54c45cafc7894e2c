"""An anatomical frame for the registration templates, from landmarks found in the template itself.

An unbiased template's frame is the mean pose of the knees it was built from, so it sits a
sampling error away from any anatomical frame (about 0.6 mm and 0.4 degrees per axis for 80
knees, more for a small cohort). Two landmarks of the tibia fix two of the three degrees of
freedom anatomically, the way a reader orients a sagittal knee slice:

* **rotation**: the tibial plateau is turned level. Its line is fitted to the articular surface
  of the medial and lateral plateaus (``MEDIAL_SLICES``, ``LATERAL_SLICES``), one tilt for both
  and a height per slice (the lateral plateau stands higher than the medial), at the same
  distance either side of the eminence (``PLATEAU_MM``), so the plateaus' symmetric
  anteroposterior curvature cannot tilt it. The tilt is the mean posterior tibial slope as seen
  in the template's frame;
* **anteroposterior position**: the joint centre lies above the tibial eminence (the tibial
  spines); its position along the plateau is the centre of the medial spine's bump above that
  line, on the slice next to the PCL slice on the medial side.

Why these edges, whatever the sequence. Cortical bone gives no signal in any MR sequence (few
mobile protons, very short T2), while articular cartilage is intermediate in all of them (PD, IW,
T2, DESS, with or without fat suppression). So where cartilage covers the tibia, on the medial
and lateral plateaus, the image darkens going down from the cartilage onto the subchondral
plate, in every contrast; what lies below the plate (marrow: bright without fat suppression, dark
with it) does not enter. The tibia's surface is the lowest such edge of the joint (the femoral
cartilage, over a meniscus or the joint space, lies above it; only the tibia's bone below). The
earlier rule, a dark-to-bright step from cortex into marrow on the intercondylar area, held only
where marrow is bright, and there the area is covered by notch fat, which fat suppression makes
as dark as the bone. The spines carry no cartilage: their outline is the cortex itself, a thin
line darker than the tissue ``LINE_MM`` above and below it whichever of the two is brighter, or
its top edge under bright notch fat or fluid (the stronger of the two per point).

The superior-inferior position is left where the group's mean put it: no landmark of the knee
marks the joint centre's height to a fraction of a millimetre (the spines' tips lie below it, the
PCL's centre of curvature above it; docs/preprocess.md gives the measured distances).

Coordinates: template pixels are 1 mm, the canonical centre is the middle of the image, rows
point inferior and columns posterior (lateral slices at positive offsets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from kneepain.preprocess.registration import Pose

PLATEAU_MM = (13.0, 20.0)  # plateau points this far either side of the eminence (mm)
EMINENCE_HALF_MM = 11.0  # the eminence's bump is looked for within this distance of its centre
# The medial tibial spine, on the slice next to the PCL slice on the medial side (offset -1:
# +offset is lateral). The lateral spine's slice also holds the ACL's tibial attachment, whose
# edge moved the lateral bump's centre by up to 0.8 mm on a 200-subject template.
EMINENCE_SLICES = (-1,)
# The medial and lateral plateaus: 12-21 mm (4-7 slices of 3 mm) either side of the PCL slice is
# past the intercondylar area (about 10-15 mm wide in adults, the notch's half width 7-11 mm over
# the adult size range) and well inside each compartment (each about 30 mm wide), for any adult
# knee and a centre slice one slice off the PCL.
MEDIAL_SLICES = (-7, -6, -5, -4)
LATERAL_SLICES = (4, 5, 6, 7)
PLATEAU_SLICES = MEDIAL_SLICES + LATERAL_SLICES
SLICES = PLATEAU_SLICES + EMINENCE_SLICES
SEARCH_MM = 12.0  # how far from the template's centre the landmarks may lie
# Half-width of the dark-line test: the subchondral plate (about 1-2 mm, blurred to 2-3 mm on the
# 1 mm grid) is darker than the tissue 2 mm above it (articular cartilage, 2-3 mm thick on the
# plateaus, or fluid) and 2 mm below it (marrow), whatever the marrow's and fat's signal.
LINE_MM = 2.0
REFINE_MM = 1.5  # per slice and column, the edge is looked for this far from its compartment's
MIN_BUMP_MM = 0.8  # an eminence lower than this above the plateau is not found
# Posterior tibial slope of adult knees reaches about 15-20 deg in the sagittal plane (MRI series
# report medial slopes of 0-18 deg), and a knee lies in the coil with its tibia up to about 10 deg
# off the scanner's axis; a plateau steeper than the sum in the template's frame is not believed.
MAX_ANGLE_DEG = 30.0
ANGLE_STEP_DEG = 0.5  # the coarse line search's step (the fit then refines it)
# The subchondral plate is smooth at the millimetre scale: within 13-20 mm either side of the
# eminence the plateaus' anteroposterior concavity (medial) and convexity (lateral) bend it by
# well under half a millimetre from a chord, and medial and lateral slopes differing by a few
# degrees add about as much. Points scattered by more than the grid's 1 mm pixel about their
# lines are not one surface (texture, a meniscus, a lesion).
MAX_SPREAD_MM = 1.0
# An edge at least a third as strong as the column's strongest counts as a joint surface: relative,
# so free of the intensity scale; a third, because a cartilage layer (2-3 mm) between a dark
# meniscus and the dark plate is blurred on the 1 mm grid to about half its contrast, below the
# edge of bright fat or fluid onto a meniscus above it.
STRONG_SHARE = 0.33
UPSAMPLE = 4  # rows resampled at 1 / UPSAMPLE mm for the edges
ROUNDS = 20  # alternate line and eminence until the eminence moves less than 0.01 mm


@dataclass(frozen=True)
class AnatomicalFrame:
    """Where the anatomical frame lies in the template's frame (``found``), or why it was not found.

    ``plateau_angle_deg`` is the plateau's tilt (counter-clockwise as displayed, the pose
    convention) and ``eminence_mm`` the eminence's distance along the plateau from the template
    centre (posterior positive); ``shift`` the frame's new centre in old canonical mm (row, col).
    """

    found: bool
    plateau_angle_deg: float = 0.0
    eminence_mm: float = 0.0
    shift_row_mm: float = 0.0
    shift_col_mm: float = 0.0
    plateau_points: int = 0
    reason: str = ""

    def matrix(self) -> np.ndarray:
        """2x3 map from the anatomical frame's canonical mm to the template's (identity if not found)."""
        if not self.found:
            return Pose().matrix()
        return Pose(self.plateau_angle_deg, self.shift_row_mm, self.shift_col_mm).matrix()

    def record(self) -> dict[str, Any]:
        """What template.json keeps of it."""
        if not self.found:
            return {"status": "fallback: group mean frame kept", "reason": self.reason}
        return {
            "status": "found",
            "plateau_angle_deg": round(self.plateau_angle_deg, 4),
            "eminence_mm": round(self.eminence_mm, 4),
            "shift_row_mm": round(self.shift_row_mm, 4),
            "shift_col_mm": round(self.shift_col_mm, 4),
            "plateau_points": self.plateau_points,
        }


def find_anatomical_frame(templates: np.ndarray) -> AnatomicalFrame:
    """Level tibial plateau and the eminence's position along it, in the templates' frame.

    ``templates``: (2 half + 1, field, field) at 1 mm. Never raises on odd images: a failed
    detection returns ``found=False`` with the reason, and the caller keeps the group's frame.
    """
    half, field = templates.shape[0] // 2, templates.shape[-1]
    if half < max(abs(k) for k in SLICES) or field < 2 * (PLATEAU_MM[1] + SEARCH_MM):
        return AnatomicalFrame(False, reason=f"templates {templates.shape} too small for the landmarks")
    if not np.isfinite(templates).all():
        return AnatomicalFrame(False, reason="templates hold non-finite values")
    centre = (field - 1) / 2.0
    # Rows resampled at a quarter millimetre (cubic spline) so that the lines' sub-pixel positions
    # do not lock to the 1 mm grid (a 0.2-0.3 mm error on a rendered knee without that).
    fine = np.stack(
        [
            ndimage.zoom(
                ndimage.gaussian_filter(templates[half + k].astype(np.float64), 0.7),
                (UPSAMPLE, 1),
                order=3,
                grid_mode=True,  # pixel areas, not centres, line up: fine row j is (j + 0.5) / UPSAMPLE - 0.5
                mode="nearest",
            )
            for k in SLICES
        ]
    )
    surface = dict(zip(SLICES, _surface(fine), strict=True))
    darkness = dict(zip(SLICES, _dark_line(fine), strict=True))
    plateau = {}
    for group in (MEDIAL_SLICES, LATERAL_SLICES):
        coarse = _compartment_rows(np.mean([surface[k] for k in group], axis=0), centre)
        for k in group:
            plateau[k] = _line_rows(surface[k], centre, 0.0, coarse - centre, REFINE_MM)[0]
    eminence, angle, row_at, points = 0.0, 0.0, 0.0, 0
    for _ in range(ROUNDS):
        line = _plateau_line(plateau, centre, eminence)
        if line is None:
            return AnatomicalFrame(False, reason="too few tibial plateau points either side of the eminence")
        angle, row_at, points, spread = line
        if abs(angle) > MAX_ANGLE_DEG or spread > MAX_SPREAD_MM:
            return AnatomicalFrame(
                False, reason=f"tibial plateau not a line (tilt {angle:.1f} deg, spread {spread:.2f} mm)"
            )
        spine = {}
        for k in EMINENCE_SLICES:
            # from 2 mm below the plateau line (the intercondylar floor lies a little below the
            # plateaus) to 8 mm above it (the spines rise 4-6 mm)
            outline = np.maximum(darkness[k], surface[k])  # the cortex line, or its top edge
            spine[k] = _line_rows(outline, centre, angle, row_at - 3.0, 5.0)[0]
        found = _eminence(spine, centre, angle, row_at, eminence)
        if found is None:
            return AnatomicalFrame(False, reason="no tibial eminence above the plateau line")
        moved, eminence = abs(found - eminence), found
        if abs(eminence) > SEARCH_MM:
            return AnatomicalFrame(False, reason=f"tibial eminence {eminence:.1f} mm from the centre")
        if moved < 0.01:
            break
    # New centre: the eminence's position along the plateau; its height over the plateau unchanged.
    radians = np.deg2rad(angle)
    return AnatomicalFrame(
        True,
        plateau_angle_deg=float(angle),
        eminence_mm=float(eminence),
        shift_row_mm=float(-eminence * np.sin(radians)),
        shift_col_mm=float(eminence * np.cos(radians)),
        plateau_points=points,
    )


def _dark_line(fine: np.ndarray) -> np.ndarray:
    """Per fine row, how much darker a pixel is than both the pixels ``LINE_MM`` above and below
    it (zero on a plain step or inside a thick dark region): a thin dark line, whichever side is
    brighter."""
    d = round(LINE_MM * UPSAMPLE)
    padded = np.pad(fine, ((0, 0), (d, d), (0, 0)), mode="edge")
    return np.clip(np.minimum(padded[:, : -2 * d], padded[:, 2 * d :]) - fine, 0.0, None)


def _surface(fine: np.ndarray) -> np.ndarray:
    """Per fine row, how much the image darkens going down across it (over 1 mm): the lower edge
    of the articular cartilage onto the subchondral plate."""
    h = UPSAMPLE // 2
    padded = np.pad(fine, ((0, 0), (h, h), (0, 0)), mode="edge")
    return np.clip(padded[:, : -2 * h] - padded[:, 2 * h :], 0.0, None)


def _slope(angle: float) -> float:
    """Rows per column of a line tilted ``angle`` (counter-clockwise as displayed; rows point down)."""
    return -float(np.tan(np.deg2rad(angle)))


def _compartment_rows(surface: np.ndarray, centre: float) -> np.ndarray:
    """Per column, the sub-pixel row (mm) of the lowest strong cartilage-to-bone edge within
    ``SEARCH_MM`` of the centre, on one compartment's edge map (its slices' mean): the tibia's
    surface is the lowest of the joint's surfaces (the femur's cartilage, over a meniscus or the
    joint space, lies above it) with only the tibia's bone below it. "Strong": at least
    ``STRONG_SHARE`` of the column's strongest edge."""
    lo, hi = int((centre - SEARCH_MM) * UPSAMPLE), int((centre + SEARCH_MM + 4) * UPSAMPLE)
    window = surface[lo:hi]
    rows = np.full(surface.shape[1], np.nan)
    for column in range(surface.shape[1]):
        values = window[:, column]
        if values.max() <= 0:
            continue
        i = int(np.flatnonzero(values >= STRONG_SHARE * values.max())[-1])
        while i + 1 < values.size and values[i + 1] > values[i]:
            i += 1
        if 0 < i < values.size - 1:
            rows[column] = (lo + i - (UPSAMPLE - 1) / 2) / UPSAMPLE
    return rows


def _vertex(a: float, b: float, c: float) -> float:
    """Sub-sample offset of a peak from three samples around it (parabola through them)."""
    curvature = a - 2 * b + c
    return 0.5 * (a - c) / curvature if curvature < 0 else 0.0


def _line_rows(
    darkness: np.ndarray, centre: float, angle: float, row_at: float | np.ndarray, half_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the sub-pixel row (mm) of the strongest response of an edge or line map
    within ``half_mm`` of a line (tilt ``angle``, row ``row_at`` at the centre column or per
    column, relative to the centre) and that response (NaN where the peak is on the window's
    border or there is none)."""
    columns = np.arange(darkness.shape[1]) - centre
    expected = (centre + row_at + _slope(angle) * columns) * UPSAMPLE
    span = round(half_mm * UPSAMPLE)
    rows, strength = np.full(columns.size, np.nan), np.zeros(columns.size)
    for column, middle in enumerate(expected):
        if not np.isfinite(middle):
            continue
        lo, hi = round(middle) - span, round(middle) + span + 1
        if lo < 1 or hi > darkness.shape[0] - 1:
            continue
        window = darkness[lo:hi, column]
        i = int(np.argmax(window))
        if 0 < i < len(window) - 1 and window[i] > 0:
            a, b, c = window[i - 1], window[i], window[i + 1]
            curvature = a - 2 * b + c
            offset = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
            # fine row j is row (j - (UPSAMPLE - 1) / 2) / UPSAMPLE
            rows[column] = (lo + i + offset - (UPSAMPLE - 1) / 2) / UPSAMPLE
            strength[column] = b
    return rows, strength


def _plateau_line(
    edges: dict[int, np.ndarray], centre: float, eminence: float
) -> tuple[float, float, int, float] | None:
    """(tilt deg, mean row of the slices' lines at the centre column relative to the centre,
    points, robust spread) of the lines through the plateau points at ``PLATEAU_MM`` either side
    of the eminence: one tilt, a height per slice (the lateral plateau stands higher than the
    medial), outliers (a meniscus, a lesion, texture) trimmed."""
    columns = np.arange(next(iter(edges.values())).size) - centre
    distance = np.abs(columns - eminence)
    near = (distance >= PLATEAU_MM[0]) & (distance <= PLATEAU_MM[1])
    xs, ys, slices = [], [], []
    for i, rows in enumerate(edges.values()):
        keep = near & np.isfinite(rows)
        xs.append(columns[keep])
        ys.append(rows[keep] - centre)
        slices.append(np.full(int(keep.sum()), i))
    x, y, s = np.concatenate(xs), np.concatenate(ys), np.concatenate(slices)
    if min((x < eminence).sum(), (x > eminence).sum()) < 6:
        return None
    design = np.column_stack([x, np.eye(len(edges))[s]])
    keep = _consensus(x, y, s)
    spread = 0.0
    for _ in range(5):
        if min((x[keep] < eminence).sum(), (x[keep] > eminence).sum()) < 6:
            return None
        used = np.flatnonzero(np.bincount(s[keep], minlength=len(edges)))
        columns_used = np.r_[0, 1 + used]
        fit = np.linalg.lstsq(design[keep][:, columns_used], y[keep], rcond=None)[0]
        coef = np.zeros(len(edges) + 1)
        coef[columns_used] = fit
        residual = y - design @ coef
        residual[~np.isin(s, used)] = np.inf
        spread = 1.4826 * float(np.median(np.abs(residual[keep])))
        keep = np.abs(residual) <= max(3 * spread, 0.3)
    if min((x[keep] < eminence).sum(), (x[keep] > eminence).sum()) < 6:
        return None
    # Rows point down: a line rising to the right is turned counter-clockwise as displayed.
    return (
        float(np.rad2deg(np.arctan(-coef[0]))),
        float(np.mean(coef[columns_used[1:]])),
        int(keep.sum()),
        spread,
    )


def _consensus(x: np.ndarray, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The points that agree, within ``MAX_SPREAD_MM``, with the tilt (searched every
    ``ANGLE_STEP_DEG`` up to ``MAX_ANGLE_DEG``) most of them agree with, each slice at its own
    height: a start for the fit that stray points (a meniscus, the bone's edge) cannot pull."""
    best, keep = -1, np.ones(x.size, bool)
    for angle in np.arange(-MAX_ANGLE_DEG, MAX_ANGLE_DEG + ANGLE_STEP_DEG / 2, ANGLE_STEP_DEG):
        level = y - _slope(angle) * x
        residual = level.copy()
        for k in np.unique(s):
            residual[s == k] -= np.median(level[s == k])
        agree = np.abs(residual) <= MAX_SPREAD_MM
        if agree.sum() > best:
            best, keep = int(agree.sum()), agree
    return keep


def _eminence(
    edges: dict[int, np.ndarray], centre: float, angle: float, row_at: float, guess: float
) -> float | None:
    """Position along the plateau (mm from the centre, posterior positive) of the centre of the
    spines' bump above the plateau line; None when there is no bump."""
    radians = np.deg2rad(angle)
    direction = np.array([np.cos(radians), -np.sin(radians)])  # along the plateau (col, row)
    normal = np.array([np.sin(radians), np.cos(radians)])  # down, perpendicular to it
    origin = np.array([0.0, row_at])  # a point of the line, in (col, row) mm
    along_all, height_all = [], []
    for offset in EMINENCE_SLICES:
        rows = edges.get(offset)
        if rows is None:
            continue
        points = np.stack([np.arange(rows.size) - centre, rows - centre], axis=1)[np.isfinite(rows)]
        along = points @ direction  # from the foot of the template centre on the line
        height = -((points - origin) @ normal)  # above the line is positive
        window = np.abs(along - guess) <= EMINENCE_HALF_MM
        along_all.append(along[window])
        height_all.append(height[window])
    if not along_all:
        return None
    along, height = np.concatenate(along_all), np.concatenate(height_all)
    weight = np.clip(height - MIN_BUMP_MM / 2, 0, None)
    if height.size == 0 or height.max() < MIN_BUMP_MM or weight.sum() <= 0:
        return None
    return float((weight * along).sum() / weight.sum())
