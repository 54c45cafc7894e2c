"""Lesions: where each one sits in a knee, and how it changes the slice intensities and the mask.

A lesion's severity (0-1) comes from the population model; its placement (compartment, position,
shape) from the knee's image stream. Every lesion stays within |u| <= 32 mm of the PCL plane
(the central +/-11 slices of 3 mm) and within 45 mm of the joint centre, so it lies inside the
preprocess crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kneepain.synth.anatomy import CARTILAGE_MM, KneeAnatomy, Tissue

MASK_LABELS = {
    1: "effusion_synovitis",
    2: "bone_marrow_lesion",
    3: "hoffa_synovitis",
    4: "cartilage_loss",
    5: "meniscal_damage",
}
MAX_LATERAL_MM = 32.0


@dataclass(frozen=True)
class Lesion:
    """One lesion: mask code, severity and an ellipsoid (centre and radii, mm) in anatomical space."""

    code: int
    severity: float
    u0: float
    y0: float
    z0: float
    ru: float
    ry: float
    rz: float
    femoral: bool = True  # BML / cartilage loss: femur (True) or tibia (False)

    def weight(self, u: float) -> float:
        """Fraction of the lesion's in-plane radii present at lateral offset ``u`` (0 outside)."""
        t = (u - self.u0) / self.ru
        return float(np.sqrt(1 - t * t)) if abs(t) < 1 else 0.0


def effusion_mm(lesions: list[Lesion]) -> float:
    """How far (mm) the recesses are distended by effusion-synovitis (0 without it)."""
    return max((3.0 + 10.0 * les.severity for les in lesions if les.code == 1), default=0.0)


def _lateral_centre(rng: np.random.Generator, low: float, high: float, ru: float, bs: float) -> float:
    """A compartment centre (medial or lateral) keeping the lesion inside |u| <= MAX_LATERAL_MM."""
    sign = -1.0 if rng.random() < 0.6 else 1.0  # the medial compartment is affected more often
    centre = bs * rng.uniform(low, high)
    return sign * min(centre, MAX_LATERAL_MM - ru)


def place_lesions(rng: np.random.Generator, severities: np.ndarray, anatomy: KneeAnatomy) -> list[Lesion]:
    """Draw the position and shape of every lesion with non-zero severity."""
    bs = anatomy.bone_scale
    lesions: list[Lesion] = []
    for code, severity in enumerate(severities, start=1):
        s = float(severity)
        if s <= 0:
            continue
        if code == 1:
            lesions.append(Lesion(1, s, 0.0, 0.0, 0.0, 22.0 * bs, 0.0, 0.0))
        elif code == 2:
            femoral = bool(rng.random() < 0.6)
            ru = 4.0 + 7.0 * s
            u0 = _lateral_centre(rng, 17.0, 25.0, ru, bs)
            z0 = bs * (5.0 if femoral else -11.0) + rng.normal(0, 1.0)
            r = 4.5 + 8.5 * s
            lesions.append(Lesion(2, s, u0, bs * rng.uniform(-8, 12), z0, ru, r, r * 0.8, femoral))
        elif code == 3:
            r = 4.0 + 6.0 * s
            y0, z0 = bs * rng.uniform(-30.0, -25.0), bs * rng.uniform(-4.0, 3.0)
            lesions.append(Lesion(3, s, rng.uniform(-6.0, 6.0), y0, z0, 4.0 + 6.0 * s, r, r))
        elif code == 4:
            femoral = bool(rng.random() < 0.55)
            ru = 3.5 + 7.5 * s
            u0 = _lateral_centre(rng, 15.0, 26.0, ru, bs)
            lesions.append(Lesion(4, s, u0, bs * rng.uniform(-6, 10), 0.0, ru, 5.0 + 10.0 * s, 0.0, femoral))
        elif code == 5:
            ru = 3.0 + 6.0 * s
            u0 = _lateral_centre(rng, 15.0, 27.0, ru, bs)
            lesions.append(Lesion(5, s, u0, 17.0 * bs, 0.0, ru, 0.0, 0.0, bool(rng.random() < 0.5)))
    return lesions


def apply_lesions(
    intensity: np.ndarray,
    labels: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    u: float,
    lesions: list[Lesion],
    anatomy: KneeAnatomy,
    fat_suppressed: bool = False,
) -> np.ndarray:
    """Change ``intensity`` in place for the lesions cut by the slice at ``u``; return the label mask.

    Effusion is drawn by the anatomy (label EFFUSION); the others alter the tissue they sit in:
    BML brightens subchondral marrow with a soft edge, Hoffa-synovitis darkens Hoffa's fat,
    cartilage loss replaces a cartilage patch by fluid, meniscal damage is a bright line through
    the dark posterior horn. With ``fat_suppressed`` (the challenge phantom) Hoffa-synovitis is
    bright oedema in the dark, suppressed fat pad instead.
    """
    mask = np.zeros(labels.shape, dtype=np.uint8)
    mask[labels == Tissue.EFFUSION] = 1
    bs = anatomy.bone_scale
    for les in lesions:
        w = les.weight(u)
        if les.code == 1 or w <= 0:
            continue
        if les.code in (2, 3):
            d2 = ((y - les.y0) / (les.ry * w)) ** 2 + ((z - les.z0) / (les.rz * w)) ** 2
            profile = np.exp(-1.4 * d2)
            tissue = Tissue.MARROW if les.code == 2 else Tissue.HOFFA_FAT
            inside = labels == tissue
            if les.code == 2:
                intensity[inside] += (0.40 + 0.1 * les.severity) * profile[inside]
            elif fat_suppressed:
                intensity[inside] += (0.35 + 0.2 * les.severity) * profile[inside]
            else:
                intensity[inside] *= 1.0 - 0.7 * profile[inside]
            mask[inside & (profile > 0.45)] = les.code
        elif les.code == 4:
            if les.femoral:  # condylar cartilage only (not trochlear or patellar)
                plate = (labels == Tissue.CARTILAGE) & (y > -12.0 * bs) & (z < 15.0 * bs)
            else:
                plate = labels == Tissue.TIBIAL_CARTILAGE
            patch = (np.abs(y - les.y0) < les.ry * w) & plate
            intensity[patch] = 0.93
            mask[patch] = 4
        elif les.code == 5:
            ub = u / bs
            top = float(anatomy.tibial_top(np.array([les.y0 / bs]), ub)[0]) * bs
            z_line = top + (CARTILAGE_MM + 2.2) * bs + np.tan(np.radians(12.0)) * (y - les.y0)
            line = (np.abs(z - z_line) < 0.6 + 0.6 * les.severity) & (y > les.y0 - 8.0)
            tear = line & (labels == Tissue.MENISCUS)
            intensity[tear] = 0.85
            mask[tear] = 5
    return mask
