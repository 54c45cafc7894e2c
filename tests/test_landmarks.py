"""The anatomical frame's landmarks (preprocess/landmarks.py) on knees rendered by the synth phantom.

A knee is drawn by the phantom's own anatomy (kneepain.synth.anatomy) with a known posterior
tibial slope, in the default contrast (fat and marrow bright) and in the challenge phantom's
fat-suppressed one (fat and marrow dark, kneepain.synth.challenge), with the renderer's cortex,
partial volume across the 3 mm slice, texture-like noise, and averaged down to the template's
1 mm grid. The plateau's tilt must be the slope (rows point down, so a plateau falling
posteriorly is turned clockwise: negative), the eminence at the anatomical origin.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kneepain.preprocess.landmarks import find_anatomical_frame
from kneepain.synth.anatomy import TISSUE_INTENSITY, KneeAnatomy, Tissue
from kneepain.synth.challenge import FAT_SUPPRESSED_INTENSITY, PARTIAL_VOLUME_MM

FIELD, FINE = 80, 4  # template side (mm) and the drawing's sub-millimetre factor
SLOPE_TOLERANCE_DEG = 0.5
EMINENCE_TOLERANCE_MM = 0.5


def rendered_knee(
    slope_deg: float, fat_suppressed: bool, bone_scale: float = 1.0, noise: float = 0.0, seed: int = 0
) -> np.ndarray:
    """(15, 80, 80) template-like slices (offsets -7..7 of 3 mm about the PCL plane, 1 mm pixels,
    zero mean, unit SD) of the phantom's knee, anatomical origin at the image centre."""
    mm = (np.arange(FIELD * FINE) - (FIELD * FINE - 1) / 2) / FINE
    row, col = np.meshgrid(mm, mm, indexing="ij")
    anatomy = KneeAnatomy(bone_scale=bone_scale, tibial_slope_deg=slope_deg)
    grid = anatomy.grid(col.astype(np.float32), (-row).astype(np.float32))
    table = FAT_SUPPRESSED_INTENSITY if fat_suppressed else TISSUE_INTENSITY
    sections = PARTIAL_VOLUME_MM if fat_suppressed else (0.0,)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    rng = np.random.default_rng(seed)
    slices = []
    for offset in range(-7, 8):
        image = np.zeros((FIELD * FINE, FIELD * FINE), np.float32)
        for du in sections:
            labels = anatomy.slice_labels(grid, 3.0 * offset + du)
            marrow = (labels == Tissue.MARROW).astype(np.uint8)
            labels[(marrow > 0) & (cv2.erode(marrow, kernel, iterations=FINE) == 0)] = Tissue.CORTEX
            image += table[labels] / len(sections)
        image = cv2.resize(image, (FIELD, FIELD), interpolation=cv2.INTER_AREA)
        image = image + noise * rng.standard_normal(image.shape).astype(np.float32)
        slices.append((image - image.mean()) / image.std())
    return np.stack(slices).astype(np.float32)


@pytest.mark.parametrize("fat_suppressed", [False, True], ids=["default", "fat_suppressed"])
@pytest.mark.parametrize(("slope_deg", "bone_scale"), [(0.0, 1.0), (8.0, 0.85), (15.0, 1.15)])
def test_plateau_slope_and_eminence_recovered(
    fat_suppressed: bool, slope_deg: float, bone_scale: float
) -> None:
    frame = find_anatomical_frame(rendered_knee(slope_deg, fat_suppressed, bone_scale, noise=0.01, seed=3))
    assert frame.found, frame.reason
    assert abs(frame.plateau_angle_deg + slope_deg) < SLOPE_TOLERANCE_DEG, frame
    # The eminence is the centre of the spines' bump measured along the plateau: under a slope
    # the spine's mid-height point (y = 0) lies that far along the tilted line.
    spine = float(KneeAnatomy().tibial_top(np.zeros(1), -3.0 / bone_scale)[0])
    mid_height = bone_scale * (spine - 5.0) / 2  # between the intercondylar floor and the top
    expected = -mid_height * np.sin(np.deg2rad(slope_deg))
    assert abs(frame.eminence_mm - expected) < EMINENCE_TOLERANCE_MM, (frame, expected)


def test_a_knee_without_a_tibia_falls_back_with_a_reason() -> None:
    rng = np.random.default_rng(5)
    for images in (np.zeros((15, FIELD, FIELD), np.float32), rng.standard_normal((15, FIELD, FIELD))):
        frame = find_anatomical_frame(images.astype(np.float32))
        assert not frame.found and frame.reason
        assert frame.record()["status"].startswith("fallback")
