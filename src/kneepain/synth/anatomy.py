"""The knee phantom: tissue labels of one sagittal slice from analytic shapes.

Coordinates are anatomical millimetres centred on the joint centre (the point between femur
and tibia in the intercondylar notch, where the PCL runs): ``y`` posterior-positive, ``z``
superior-positive, ``u`` lateral-positive (0 = PCL plane). Bones and cartilage scale with
``bone_scale`` (body size, sex), the soft-tissue envelope with ``fat_mm`` and ``leg_scale``
(BMI). Shapes are painted in order, later tissues over earlier ones, so bones cover the ends of
ligaments and tendons where they insert. Analytic shapes (rather than a segmented atlas) keep the
phantom small, fast to evaluate per slice and exactly known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Tissue label codes of the phantom."""

    AIR = 0
    SKIN = 1
    SUBCUTANEOUS_FAT = 2
    MUSCLE = 3
    FAT = 4
    HOFFA_FAT = 5
    VESSEL = 6
    FLUID = 7
    EFFUSION = 8
    TENDON = 9
    MENISCUS = 10
    CARTILAGE = 11
    PCL = 12
    ACL = 13
    MARROW = 14
    CORTEX = 15
    TIBIAL_CARTILAGE = 16


def tissue_contrast(intensity: Sequence[float], texture: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A contrast's per-tissue intensity and texture strength as float32 tables in :class:`Tissue`
    order; ValueError unless each has one value per tissue."""
    tables = np.array(intensity, dtype=np.float32), np.array(texture, dtype=np.float32)
    if any(table.shape != (len(Tissue),) for table in tables):
        raise ValueError(
            f"a contrast needs one intensity and one texture value for each of {len(Tissue)} tissues"
        )
    return tables


# Intermediate-weighted TSE look. Intensity (fraction of full scale): fat and fluid bright, cortex,
# tendons, menisci and the PCL dark, cartilage and marrow intermediate. Texture: relative strength
# of the smooth texture (marrow trabeculae, muscle fibres).
TISSUE_INTENSITY, TISSUE_TEXTURE = tissue_contrast(
    [0.01, 0.50, 0.86, 0.30, 0.80, 0.80, 0.10, 0.93, 0.95, 0.05, 0.07, 0.60, 0.06, 0.30, 0.52, 0.05, 0.60],
    [0.0, 0.05, 0.04, 0.10, 0.05, 0.05, 0.0, 0.02, 0.02, 0.05, 0.05, 0.06, 0.08, 0.20, 0.14, 0.0, 0.06],
)

NOTCH_HALF_WIDTH = 9.0  # mm: the intercondylar notch spans |u| < 9 (times bone_scale)
PCL_HALF_WIDTH = 4.8  # mm: the PCL spans |u| < 4.8, i.e. 2-3 slices of 3 mm
MEDIAL_CONDYLE = (-47.0, 22.0)  # outer edge u, sagittal radius (bone units)
LATERAL_CONDYLE = (44.0, 20.0)
# (y, z) of the condyle circles: high enough that femoral and tibial cartilage leave a joint space.
CONDYLE_CENTRE = (4.0, 22.5)
CARTILAGE_MM = 2.4
EFFUSION_MAX_LATERAL = 30.0  # mm: effusion stays within the central +/-11 slices


@dataclass(frozen=True)
class KneeAnatomy:
    """Size parameters of one knee."""

    bone_scale: float = 1.0
    fat_mm: float = 10.0
    leg_scale: float = 1.0
    cartilage_scale: float = 1.0
    # The challenge phantom's extra freedoms (kneepain.synth.challenge); the defaults are the
    # original phantom, shape for shape.
    ml_shift_mm: float = 0.0  # middle of the soft-tissue envelope's medial-lateral extent (u, mm)
    fluid_mm: float = 1.2  # thickness of the normal fluid film in the recesses
    tibial_slope_deg: float = 0.0  # posterior slope of the tibial plateau
    vein: bool = False  # paint the popliteal vein beside the artery
    recess_top: float = 45.0  # upper end of the suprapatellar recess (bone units): a large effusion lifts it

    def femoral_condyle(self, u: float) -> tuple[float, float] | None:
        """(radius, lateral sign) of the condyle cut at ``u`` (bone units), or None in the notch."""
        side = MEDIAL_CONDYLE if u < 0 else LATERAL_CONDYLE
        outer, radius = abs(side[0]), side[1]
        if abs(u) < NOTCH_HALF_WIDTH or abs(u) >= outer:
            return None
        t = (abs(u) - NOTCH_HALF_WIDTH) / (outer - NOTCH_HALF_WIDTH)
        return radius * float(np.sqrt(max(0.0, 1.0 - t**4))), float(np.sign(u))

    def tibial_top(self, y: np.ndarray, u: float) -> np.ndarray:
        """Height of the tibial plateau (bone units): medial concave, lateral convex, spines centrally."""
        bowl = np.clip(1 - (y / 24.0) ** 2, 0, None)
        drop = np.tan(np.radians(self.tibial_slope_deg)) * np.clip(y, -30, 30)
        if abs(u) < NOTCH_HALF_WIDTH:
            spine = 4.5 * np.exp(-(((abs(u) - 4.0) / 2.5) ** 2)) * np.exp(-((y / 7.0) ** 2))
            return -5.0 + spine - drop
        return (-4.0 - 1.2 * bowl if u < 0 else -4.0 + 1.0 * bowl) - drop

    def grid(self, y: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        """Everything about a knee's pixel grid that does not change from slice to slice.

        ``y`` and ``z`` hold each pixel's anatomical coordinates in mm. Computing these once per
        knee instead of once per slice halves the render time.
        """
        bs = self.bone_scale
        yb, zb = y / bs, z / bs
        cy, cz = CONDYLE_CENTRE
        rp = np.hypot(yb, zb - 2.0)
        return {
            "y": y,
            "z": z,
            "yb": yb,
            "zb": zb,
            "leg_z": 0.06 * np.clip(z, -80, 80),
            "abs_y": np.abs(y - 3.0),
            "septa": (_segment_distance(yb, zb, (18.0, 95.0), (48.0, 30.0)) < 1.0)
            | (_segment_distance(yb, zb, (30.0, -20.0), (22.0, -95.0)) < 1.0)
            | (_segment_distance(yb, zb, (-30.0, 95.0), (-44.0, 50.0)) < 0.8),
            "popliteal": _ellipse(yb, zb, 36.0, 6.0, 13.0, 42.0) < 1,
            "prefemoral": _ellipse(yb, zb, -28.0, 46.0, 8.0, 20.0) < 1,
            "notch": (yb > -16) & (yb < 26) & (zb > -8) & (zb < 32),
            "hoffa": _convex_polygon(yb, zb, [(-38.0, 9.0), (-30.0, -22.0), (-17.0, -6.0), (-14.0, 8.0)]),
            "vessel": np.abs(yb - 40.0) < 3.0,
            "vein": _ellipse(yb, zb, 46.0, 6.0, 4.0, 60.0) < 1,
            "slope_drop": np.float32(np.tan(np.radians(self.tibial_slope_deg))) * np.clip(yb, -30, 30),
            "femur_half_ap": 14.0 + 9.0 * np.clip((62.0 - zb) / 35.0, 0, 1),
            # x bone_scale (<= 1.15): within 52 mm of the joint (the default recess_top)
            "recess_z": (zb > 26) & (zb < self.recess_top),
            "effusion_taper": np.clip((self.recess_top - zb) / 6, 0, 1) * np.clip((zb - 26) / 4, 0, 1),
            "r_condyle": np.hypot(yb - cy, zb - cz),
            "behind": (yb > cy + 6) & (zb > 6) & (zb < 42),
            "condyle_cartilage_arc": (zb < cz + 4) | (yb > cy + 8),
            "patellar_tendon": _segment_distance(yb, zb, (-43.5, 8.0), (-29.0, -30.0)) < 2.4,
            "quadriceps_tendon": _segment_distance(yb, zb, (-42.0, 44.0), (-39.0, 95.0)) < 3.0,
            "posterior_horn": (yb > 9) & (yb < 25),
            "anterior_horn": (yb > -25) & (yb < -11),
            "post_h": 0.8 + 6.5 * (yb - 9.0) / 16.0,
            "ant_h": 0.8 + 5.0 * (-11.0 - yb) / 14.0,
            "tib_ml": 15.0 + 28.0 * np.clip((zb + 50.0) / 30.0, 0, 1),
            "plateau_y": np.abs(yb + 1.0) < 22.5,
            "r_trochlea": np.hypot(yb + 9.0, zb - 23.0),
            "trochlea_cartilage_arc": (yb < -12) & (zb > 8),
            "rp": rp,
            "pcl_arc": (np.degrees(np.arctan2(zb - 2.0, yb)) > -55)
            & (np.degrees(np.arctan2(zb - 2.0, yb)) < 118),
            "acl": _segment_distance(yb, zb, (-9.0, -3.0), (15.0, 23.0)) < 2.4,
            "femur_ml": 15.0 + 28.0 * np.clip((58.0 - zb) / 28.0, 0, 1),
            "roof_notch": 19.0 + 0.45 * yb,
            "tib_half_ap": np.where(zb > -25, 23.5, 14.0 + 9.5 * np.clip((zb + 55.0) / 30.0, 0, 1)),
            "tibia_y": np.abs(yb + 1.0),
            "tubercle": _ellipse(yb, zb, -25.0, -30.0, 6.0, 9.0) < 1,
            "r_fibula": np.hypot(yb - 20.0, zb + 24.0),
            "bowl": np.clip(1 - (yb / 24.0) ** 2, 0, None),
            "spine_y": np.exp(-((yb / 7.0) ** 2)),
        }

    def slice_labels(self, grid: dict[str, np.ndarray], u: float, effusion_mm: float = 0.0) -> np.ndarray:
        """Tissue labels (uint8) of the sagittal slice at lateral offset ``u`` mm on a knee ``grid``.

        ``effusion_mm`` distends the suprapatellar and posterior recesses with fluid (label
        EFFUSION beyond the normal film).
        """
        g = grid
        bs = self.bone_scale
        yb, zb, ub = g["yb"], g["zb"], u / bs
        labels = np.zeros(yb.shape, dtype=np.uint8)

        def paint(mask: np.ndarray, tissue: Tissue) -> None:
            labels[mask] = tissue

        # --- soft-tissue envelope: skin, subcutaneous fat, muscle -----------------------------
        leg_half_ml = 66.0 * self.leg_scale + self.fat_mm
        leg_u = u - self.ml_shift_mm if self.ml_shift_mm else u
        if abs(leg_u) >= leg_half_ml:
            return labels
        shape = np.sqrt(1 - (leg_u / leg_half_ml) ** 2)
        depth = (55.0 * self.leg_scale + self.fat_mm) * shape + g["leg_z"] * shape - g["abs_y"]
        paint(depth > 0, Tissue.SKIN)
        paint(depth > 1.5, Tissue.SUBCUTANEOUS_FAT)
        paint(depth > 1.5 + self.fat_mm * (0.6 + 0.4 * shape), Tissue.MUSCLE)

        # --- fat compartments ---------------------------------------------------------------
        if abs(ub) < 40:
            paint(g["septa"] & (depth > 8.0), Tissue.FAT)  # intermuscular fat planes
        if abs(ub) < 24:
            paint(g["popliteal"], Tissue.FAT)  # popliteal fossa
            paint(g["prefemoral"], Tissue.FAT)  # prefemoral / suprapatellar fat
        if abs(ub) < NOTCH_HALF_WIDTH + 1:
            paint(g["notch"], Tissue.FAT)  # intercondylar notch
        if abs(ub) < 22:
            paint(g["hoffa"], Tissue.HOFFA_FAT)
        if abs(ub) < 4:
            paint(g["vessel"], Tissue.VESSEL)  # popliteal artery flow void
        if self.vein and -3.0 < ub < 7.0:
            paint(g["vein"], Tissue.VESSEL)  # popliteal vein, posterior-lateral of the artery

        # --- joint recesses (thin film of fluid; effusion distends them) ----------------------
        if abs(ub) < 22:
            front = -g["femur_half_ap"] - yb  # distance in front of the femur's anterior cortex
            film = self.fluid_mm
            paint(g["recess_z"] & (front > 0) & (front < film), Tissue.FLUID)
            if effusion_mm > 0:
                reach = film + effusion_mm * g["effusion_taper"]
                paint(g["recess_z"] & (front >= film) & (front < reach), Tissue.EFFUSION)
        condyle = self.femoral_condyle(ub)
        cz = CONDYLE_CENTRE[1]
        cart = CARTILAGE_MM * self.cartilage_scale
        r = g["r_condyle"]
        if condyle is not None:
            radius = condyle[0]
            back = 1.0 if self.fluid_mm == 1.2 else 0.8 * self.fluid_mm
            paint(g["behind"] & (r > radius + cart) & (r < radius + cart + back), Tissue.FLUID)
            if effusion_mm > 0 and abs(u) < EFFUSION_MAX_LATERAL:
                outer = radius + cart + back + 0.6 * min(effusion_mm, 13.0)
                paint(g["behind"] & (r >= radius + cart + 1.0) & (r < outer), Tissue.EFFUSION)

        # --- tendons --------------------------------------------------------------------------
        if abs(ub) < 14:
            paint(g["patellar_tendon"], Tissue.TENDON)
        if abs(ub) < 22:
            paint(g["quadriceps_tendon"], Tissue.TENDON)

        # --- menisci: dark wedges on the plateau, larger posteriorly --------------------------
        if abs(ub) < NOTCH_HALF_WIDTH:
            top = -5.0 + 4.5 * float(np.exp(-(((abs(ub) - 4.0) / 2.5) ** 2))) * g["spine_y"]
        else:
            top = -4.0 - 1.2 * g["bowl"] if ub < 0 else -4.0 + 1.0 * g["bowl"]
        if self.tibial_slope_deg:
            top = top - g["slope_drop"]  # the plateau falls posteriorly
        if condyle is not None and 10 < abs(ub) < 41:
            above = zb - (top + cart)
            post_h = g["post_h"] * (1.15 if ub < 0 else 1.0)
            paint(g["posterior_horn"] & (above > -0.3) & (above < post_h), Tissue.MENISCUS)
            paint(g["anterior_horn"] & (above > -0.3) & (above < g["ant_h"]), Tissue.MENISCUS)

        # --- cartilage ------------------------------------------------------------------------
        tib_ml = g["tib_ml"]
        if abs(ub) >= NOTCH_HALF_WIDTH:
            on_plateau = g["plateau_y"] & (abs(ub) < tib_ml)
            paint(on_plateau & (zb > top) & (zb < top + cart), Tissue.TIBIAL_CARTILAGE)
        if condyle is not None:
            paint((r >= condyle[0]) & (r < condyle[0] + cart) & g["condyle_cartilage_arc"], Tissue.CARTILAGE)
        troch_r = 14.0 * np.sqrt(max(0.0, 1 - (ub / 30.0) ** 2)) - (2.0 if abs(ub) < 8 else 0.0)
        rt = g["r_trochlea"]
        if troch_r > 0:
            paint((rt >= troch_r) & (rt < troch_r + cart) & g["trochlea_cartilage_arc"], Tissue.CARTILAGE)
        pat_prof = 1 - (ub / 27.0) ** 2
        if pat_prof > 0:
            pry, prz = 9.5 * np.sqrt(pat_prof), 19.0 * pat_prof**0.25
            pe = _ellipse(yb, zb, -37.0, 26.0, pry + cart, prz + cart * 0.5)
            paint((pe < 1) & (yb > -37.0), Tissue.CARTILAGE)

        # --- cruciate ligaments in the notch --------------------------------------------------
        if abs(ub) < PCL_HALF_WIDTH:
            half = 3.4 * np.sqrt(np.clip((PCL_HALF_WIDTH - abs(ub)) / 1.8, 0, 1))
            paint((np.abs(g["rp"] - 17.0) < half) & g["pcl_arc"], Tissue.PCL)
        if 2.5 < ub < 9.5:
            paint(g["acl"], Tissue.ACL)

        # --- bones: femur, tibia, patella, fibula (marrow; cortex added by the renderer) -------
        roof = g["roof_notch"] if abs(ub) < NOTCH_HALF_WIDTH else cz
        # Elliptic cross-sections (u, y) give the metaphyses a rounded top in parasagittal slices.
        femur_section = (ub / g["femur_ml"]) ** 2 + (yb / g["femur_half_ap"]) ** 2
        bone = (zb > roof) & (femur_section < 1)
        if condyle is not None:
            bone |= r < condyle[0]
        if troch_r > 0:
            bone |= (rt < troch_r) & (zb > 8)
        tibia_section = (ub / tib_ml) ** 4 + (g["tibia_y"] / g["tib_half_ap"]) ** 4
        bone |= (zb < top) & (tibia_section < 1)
        if abs(ub) < 12:
            bone |= g["tubercle"]  # tibial tubercle
        if pat_prof > 0:
            bone |= _ellipse(yb, zb, -37.0, 26.0, pry, prz) < 1
        if 28 < ub < 44:
            bone |= g["r_fibula"] < 9.0 * np.sqrt(max(0.0, 1 - ((ub - 36.0) / 8.0) ** 2))
        labels[bone] = Tissue.MARROW
        return labels


def _ellipse(y: np.ndarray, z: np.ndarray, cy: float, cz: float, ry: float, rz: float) -> np.ndarray:
    """Normalised squared distance to an axis-aligned ellipse (< 1 inside)."""
    return ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2


def _segment_distance(
    y: np.ndarray, z: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """Distance (mm) of every point to the segment a-b."""
    dy, dz = b[0] - a[0], b[1] - a[1]
    t = np.clip(((y - a[0]) * dy + (z - a[1]) * dz) / (dy * dy + dz * dz), 0, 1)
    return np.hypot(y - (a[0] + t * dy), z - (a[1] + t * dz))


def _convex_polygon(y: np.ndarray, z: np.ndarray, corners: list[tuple[float, float]]) -> np.ndarray:
    """Inside test for a convex polygon given counter-clockwise or clockwise corners."""
    inside_pos = np.ones(y.shape, dtype=bool)
    inside_neg = np.ones(y.shape, dtype=bool)
    for (y0, z0), (y1, z1) in zip(corners, corners[1:] + corners[:1], strict=True):
        cross = (y1 - y0) * (z - z0) - (z1 - z0) * (y - y0)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    return inside_pos | inside_neg
