"""An anatomical frame for the registration templates, from landmarks found in the template itself.

An unbiased template's frame is the mean pose of the knees it was built from, so it sits a
sampling error away from any anatomical frame (about 0.6 mm and 0.4 degrees per axis for 80
knees, more for a small cohort). Two landmarks of the tibia fix two of the three degrees of
freedom anatomically, the way a reader orients a sagittal knee slice:

* **rotation**: the tibial plateau of the intercondylar area (the top of the tibia two slices
  either side of the PCL slice) is turned level. Its line is fitted to the inner edge of the
  tibia's cortex on both sides of the eminence, at the same distance either side
  (``PLATEAU_MM``), so a symmetric eminence cannot tilt it;
* **anteroposterior position**: the joint centre lies above the tibial eminence (the tibial
  spines); its position along the plateau is the centre of the medial spine's bump above that
  line, on the slice next to the PCL slice on the medial side.

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

PLATEAU_MM = (13.0, 20.0)  # plateau line fitted this far either side of the eminence (mm)
EMINENCE_HALF_MM = 11.0  # the eminence's bump is looked for within this distance of its centre
# The medial tibial spine, on the slice next to the PCL slice on the medial side (offset -1:
# +offset is lateral). The lateral spine's slice also holds the ACL's tibial attachment, whose
# edge moved the lateral bump's centre by up to 0.8 mm on a 200-subject template.
EMINENCE_SLICES = (-1,)
# Two slices (about 6 mm) either side of the PCL slice: still the intercondylar area (no condyle
# over the tibia), and clear of the PCL's tibial attachment, which on the slices between tilted
# the fitted line by about one degree (posterior cortex edge raised by the ligament over it).
PLATEAU_SLICES = (-2, 2)
SLICES = (-2, -1, 0, 1, 2)
SEARCH_MM = 12.0  # how far from the template's centre the landmarks may lie
MIN_BUMP_MM = 0.8  # an eminence lower than this above the plateau is not found
MAX_ANGLE_DEG = 10.0  # a plateau steeper than this in the template frame is not believed
MAX_SPREAD_MM = 0.6  # robust SD of the plateau points about their line beyond which it fails
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
    centre = (field - 1) / 2.0
    # Rows resampled at a quarter millimetre (cubic spline) so that the edges' sub-pixel positions
    # do not lock to the 1 mm grid (a 0.2-0.3 mm error on a rendered knee without that).
    fine = np.stack(
        [
            ndimage.zoom(
                ndimage.gaussian_filter(templates[half + k], 0.7),
                (UPSAMPLE, 1),
                order=3,
                grid_mode=True,  # pixel areas, not centres, line up: fine row j is (j + 0.5) / UPSAMPLE - 0.5
                mode="nearest",
            )
            for k in SLICES
        ]
    )
    # Down a column: the tibia's cortex (dark) over its marrow is a dark-to-bright step.
    step = np.diff(fine, axis=1)
    plateau_row = _plateau_row(step[SLICES.index(0)], centre)
    if plateau_row is None:
        return AnatomicalFrame(False, reason="no tibial plateau edge near the template centre")
    edges = {k: _edge_rows(step[i], plateau_row) for i, k in enumerate(SLICES)}
    plateau = {k: edges[k] for k in PLATEAU_SLICES}
    eminence, angle, row_at, points = 0.0, 0.0, plateau_row - centre, 0
    for _ in range(ROUNDS):
        line = _plateau_line(plateau, centre, eminence)
        if line is None:
            return AnatomicalFrame(False, reason="too few tibial plateau points either side of the eminence")
        angle, row_at, points, spread = line
        if abs(angle) > MAX_ANGLE_DEG or spread > MAX_SPREAD_MM:
            return AnatomicalFrame(
                False, reason=f"tibial plateau not a line (tilt {angle:.1f} deg, spread {spread:.2f} mm)"
            )
        found = _eminence(edges, centre, angle, row_at, eminence)
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


def _plateau_row(step: np.ndarray, centre: float) -> float | None:
    """Row (mm, template pixels) of the tibial plateau's cortex-to-marrow edge on the PCL slice: the
    lowest of the strong horizontal edges near the centre (the notch roof and the PCL lie above
    the tibia, only marrow below it)."""
    lo, hi = int((centre - SEARCH_MM) * UPSAMPLE), int((centre + SEARCH_MM + 4) * UPSAMPLE)
    columns = slice(int(centre - PLATEAU_MM[1]), int(centre + PLATEAU_MM[1]) + 1)
    strength = np.clip(step[lo:hi, columns], 0, None).sum(axis=1)
    # a tilted edge spreads over several rows: sum over 2 mm
    strength = np.convolve(strength, np.ones(2 * UPSAMPLE), mode="same")
    if not strength.any():
        return None
    strong = np.flatnonzero(strength >= 0.5 * strength.max())
    return (lo + int(strong[-1])) / UPSAMPLE


def _edge_rows(step: np.ndarray, plateau_row: float) -> np.ndarray:
    """Per column, the sub-pixel row (mm) of the strongest cortex-to-marrow step from 7 mm above
    to 5 mm below the plateau row (NaN where the peak is on the window's border)."""
    lo, hi = int((plateau_row - 7) * UPSAMPLE), int((plateau_row + 5) * UPSAMPLE)
    window = step[lo:hi]
    rows = np.full(step.shape[1], np.nan)
    peak = np.argmax(window, axis=0)
    for column, i in enumerate(peak):
        if 0 < i < len(window) - 1 and window[i, column] > 0:
            a, b, c = window[i - 1, column], window[i, column], window[i + 1, column]
            curvature = a - 2 * b + c
            offset = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
            # step i lies between fine rows i and i + 1; fine row j is row (j - (UPSAMPLE - 1) / 2) / UPSAMPLE
            rows[column] = (lo + i + 0.5 + offset - (UPSAMPLE - 1) / 2) / UPSAMPLE
    return rows


def _plateau_line(
    edges: dict[int, np.ndarray], centre: float, eminence: float
) -> tuple[float, float, int, float] | None:
    """(tilt deg, row at the centre column relative to the centre, points, robust spread) of the
    line through the plateau points at ``PLATEAU_MM`` either side of the eminence, outliers
    (a ligament's edge, an artifact) trimmed."""
    columns = np.arange(next(iter(edges.values())).size) - centre
    distance = np.abs(columns - eminence)
    near = (distance >= PLATEAU_MM[0]) & (distance <= PLATEAU_MM[1])
    xs, ys = [], []
    for rows in edges.values():
        keep = near & np.isfinite(rows)
        xs.append(columns[keep])
        ys.append(rows[keep] - centre)
    x, y = np.concatenate(xs), np.concatenate(ys)
    anterior, posterior = (x < eminence).sum(), (x > eminence).sum()
    if min(anterior, posterior) < 6:
        return None
    keep = np.ones(x.size, bool)
    for _ in range(4):
        slope, intercept = np.polyfit(x[keep], y[keep], 1)
        residual = y - (slope * x + intercept)
        spread = 1.4826 * float(np.median(np.abs(residual[keep])))
        keep = np.abs(residual) <= max(3 * spread, 0.3)
        if min((x[keep] < eminence).sum(), (x[keep] > eminence).sum()) < 6:
            return None
    slope, intercept = np.polyfit(x[keep], y[keep], 1)
    # Rows point down: a line rising to the right is turned counter-clockwise as displayed.
    return float(np.rad2deg(np.arctan(-slope))), float(intercept), int(keep.sum()), spread


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
