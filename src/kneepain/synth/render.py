"""One knee series as pixels: phantom slices + lesions + acquisition + artifact -> uint16 volume and mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from kneepain.synth import acquisition as acq
from kneepain.synth.anatomy import TISSUE_INTENSITY, TISSUE_TEXTURE, KneeAnatomy, Tissue
from kneepain.synth.artifacts import Artifact, apply_artifact
from kneepain.synth.challenge import FAT_SUPPRESSED_TEXTURE, PARTIAL_VOLUME_MM, ChallengeKnee, intensity_table
from kneepain.synth.lesions import Lesion, apply_lesions, effusion_mm

_CORTEX_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


@dataclass
class KneeImage:
    """A rendered series: pixels and lesion mask in series order, and the kept slice indices."""

    pixels: np.ndarray  # uint16 (slices, ROWS, COLS)
    mask: np.ndarray  # uint8 (slices, ROWS, COLS), codes of kneepain.synth.lesions.MASK_LABELS
    kept: list[int]  # original slice index of each kept slice (a gap where slices are missing)
    vessels: np.ndarray | None = None  # challenge phantom: uint8 popliteal vessel mask, like ``mask``
    effusion_ml: float = 0.0  # challenge phantom: rendered volume of effusion (label EFFUSION)
    fluid_ml: float = 0.0  # challenge phantom: rendered volume of the normal fluid film (label FLUID)


def lateral_offset(pose: acq.Pose, index: int, side: str) -> float:
    """Anatomical lateral offset u (mm) of slice ``index``.

    Slice index grows toward the patient's right in both series, which is lateral for the right
    knee and medial for the left knee (the mirrored slice order of bilateral series).
    """
    along = pose.slice_offset_mm(index)
    return along if side == "right" else -along


def render_knee(
    rng: np.random.Generator,
    anatomy: KneeAnatomy,
    pose: acq.Pose,
    acquisition: acq.Acquisition,
    lesions: list[Lesion],
    side: str,
    artifact: Artifact | None,
    challenge: ChallengeKnee | None = None,
    challenge_rng: np.random.Generator | None = None,
) -> KneeImage:
    """Render one knee series deterministically from ``rng`` and the drawn parameters.

    With ``challenge`` (and its own ``challenge_rng``) the knee is rendered by the challenge
    phantom (kneepain.synth.challenge): fat-suppressed contrast, partial volume, finer texture.
    """
    series = _Series(anatomy, pose, acquisition, lesions, side, artifact)
    if challenge is not None:
        return _render_challenge(rng, challenge_rng, series, challenge)
    y, z, grid, bias, signal, mask = series.canvas()
    n, (h, w) = pose.n_slices, y.shape
    # Smooth texture field (about 3 mm blobs) shared by all tissues, different per slice.
    coarse = rng.standard_normal((n, h // 4, w // 4), dtype=np.float32)
    swell = effusion_mm(lesions)
    for index in range(n):
        u = lateral_offset(pose, index, side)
        labels = series.labels(grid, u, swell)
        texture = cv2.resize(coarse[index], (w, h), interpolation=cv2.INTER_CUBIC)
        intensity = TISSUE_INTENSITY[labels] * (1.0 + TISSUE_TEXTURE[labels] * texture)
        lesion_mask = apply_lesions(intensity, labels, y, z, u, lesions, anatomy)
        intensity = cv2.GaussianBlur(intensity, (0, 0), 0.6)
        signal[index] = acq.upsample(intensity) * bias
        mask[index] = acq.upsample_mask(lesion_mask)

    pixels, kept = series.acquire(rng, signal)
    return KneeImage(pixels=pixels, mask=mask[kept], kept=kept)


@dataclass(frozen=True)
class _Series:
    """What either phantom renders one knee series from (:func:`render_knee`'s drawn parameters)."""

    anatomy: KneeAnatomy
    pose: acq.Pose
    acquisition: acq.Acquisition
    lesions: list[Lesion]
    side: str
    artifact: Artifact | None

    def canvas(
        self,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """The anatomical grid (y, z and the anatomy's grid), the coil's bias field, and empty
        signal (float32) and mask (uint8) volumes of the series."""
        y, z = acq.anatomical_grid(self.pose)
        bias = acq.bias_field(self.acquisition, (acq.ROWS, acq.COLS))
        signal = np.empty((self.pose.n_slices, acq.ROWS, acq.COLS), dtype=np.float32)
        mask = np.empty((self.pose.n_slices, acq.ROWS, acq.COLS), dtype=np.uint8)
        return y, z, self.anatomy.grid(y, z), bias, signal, mask

    def labels(self, grid: dict[str, np.ndarray], u: float, effusion: float) -> np.ndarray:
        """Tissue labels of the section at lateral offset ``u``, the marrow's rim drawn as cortex."""
        labels = self.anatomy.slice_labels(grid, u, effusion_mm=effusion)
        marrow = (labels == Tissue.MARROW).astype(np.uint8)
        inner = cv2.erode(marrow, _CORTEX_KERNEL, iterations=2)
        labels[(marrow > 0) & (inner == 0)] = Tissue.CORTEX
        return labels

    def acquire(self, rng: np.random.Generator, signal: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Scale, artifact, noise and quantisation of a noise-free signal volume; (pixels, kept slices)."""
        signal *= acq.FULL_SCALE * self.acquisition.scale
        kept = list(range(signal.shape[0]))
        if self.artifact is not None:
            if self.artifact.kind == "missing_slices":
                kept = [i for i in kept if i not in self.artifact.slices]
            else:
                apply_artifact(signal, self.artifact)
        signal = signal[kept]
        return acq.quantise(acq.rician(signal, self.acquisition.noise_sd, rng)), kept


def _render_challenge(
    rng: np.random.Generator, crng: np.random.Generator | None, series: _Series, knee: ChallengeKnee
) -> KneeImage:
    """The challenge phantom's rendering: each slice the mean of two sections 1.5 mm apart (partial
    volume across the 3 mm slice), fat-suppressed intensities, a coarse plus a fine texture."""
    crng = crng if crng is not None else np.random.default_rng(0)
    anatomy, lesions = series.anatomy, series.lesions
    y, z, grid, bias, signal, mask = series.canvas()
    n, (h, w) = series.pose.n_slices, y.shape
    coarse = crng.standard_normal((n, h // 4, w // 4), dtype=np.float32)
    fine = crng.standard_normal((n, h // 2, w // 2), dtype=np.float32)
    swell = effusion_mm(lesions) * knee.effusion_scale
    table = intensity_table(knee)
    section_ml = (acq.PIXEL_MM * acq.RENDER_FACTOR) ** 2 * (acq.SLICE_MM / len(PARTIAL_VOLUME_MM)) / 1000.0
    vessels = np.empty((n, acq.ROWS, acq.COLS), dtype=np.uint8)
    effusion_px = fluid_px = 0
    for index in range(n):
        u = lateral_offset(series.pose, index, series.side)
        texture = 0.7 * cv2.resize(coarse[index], (w, h), interpolation=cv2.INTER_CUBIC)
        texture += 0.7 * cv2.resize(fine[index], (w, h), interpolation=cv2.INTER_CUBIC)
        intensity = np.zeros((h, w), dtype=np.float32)
        lesion_mask = np.zeros((h, w), dtype=np.uint8)
        vessel = np.zeros((h, w), dtype=np.uint8)
        for du in PARTIAL_VOLUME_MM:
            labels = series.labels(grid, u + du, swell)
            section = table[labels] * (1.0 + FAT_SUPPRESSED_TEXTURE[labels] * texture)
            found = apply_lesions(section, labels, y, z, u + du, lesions, anatomy, fat_suppressed=True)
            np.maximum(lesion_mask, found, out=lesion_mask)
            vessel |= (labels == Tissue.VESSEL).astype(np.uint8)
            effusion_px += int(np.count_nonzero(labels == Tissue.EFFUSION))
            fluid_px += int(np.count_nonzero(labels == Tissue.FLUID))
            intensity += section / len(PARTIAL_VOLUME_MM)
        intensity = cv2.GaussianBlur(np.clip(intensity, 0.0, None), (0, 0), 0.6)
        signal[index] = acq.upsample(intensity) * bias
        mask[index] = acq.upsample_mask(lesion_mask)
        vessels[index] = acq.upsample_mask(vessel)
    pixels, kept = series.acquire(rng, signal)
    return KneeImage(
        pixels=pixels,
        mask=mask[kept],
        kept=kept,
        vessels=vessels[kept],
        effusion_ml=round(effusion_px * section_ml, 2),
        fluid_ml=round(fluid_px * section_ml, 2),
    )


CORONAL_SIZE = 256
CORONAL_SLICES = 4


def render_coronal(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A small coronal series (uint16, 4 x 256 x 256): condyles over a plateau, for the reader to skip.

    It only has to be a plausible other MR series of the study (COR_IW_TSE), so it is coarse.
    """
    rows, cols = np.mgrid[0:CORONAL_SIZE, 0:CORONAL_SIZE].astype(np.float32)
    leg = np.abs(cols - 128) < 100
    femur = ((np.hypot(rows - 110, cols - 95) < 34) | (np.hypot(rows - 110, cols - 161) < 32)) | (
        (rows < 110) & (np.abs(cols - 128) < 50)
    )
    tibia = (rows > 150) & (np.abs(cols - 128) < 62 - np.clip(rows - 190, 0, None) * 0.6)
    base = np.where(leg, 0.35, 0.01) + np.where(femur | tibia, 0.2, 0.0)
    base = cv2.GaussianBlur(base.astype(np.float32), (0, 0), 1.5) * acq.FULL_SCALE * scale
    volume = np.repeat(base[None], CORONAL_SLICES, axis=0)
    return acq.quantise(acq.rician(volume, 0.03 * acq.FULL_SCALE * scale, rng))
