"""Scan artifacts that the paper's quality check removed: drawn per knee, applied to the signal.

Each artifact is applied to the noise-free signal volume (full matrix) before noise, except that
missing slices are dropped from the series altogether (the remaining files keep their original
InstanceNumber and position, so the gap is visible in the geometry).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kneepain.synth.acquisition import PIXEL_MM

ARTIFACTS = ("missing_slices", "blank_slices", "motion", "metal", "high_contrast")


@dataclass(frozen=True)
class Artifact:
    """One artifact and its drawn parameters."""

    kind: str
    slices: tuple[int, ...] = ()  # affected (or removed) slice indices
    row: float = 0.0  # centre (pixels) of a local artifact
    col: float = 0.0
    radius_px: float = 0.0
    strength: float = 0.0


def draw_artifact(rng: np.random.Generator, rate: float, n_slices: int, centre: int) -> Artifact | None:
    """With probability ``rate`` one artifact of a random kind, else None."""
    if rng.random() >= rate:
        return None
    kind = str(rng.choice(ARTIFACTS))
    side = 1 if rng.random() < 0.5 else -1
    if kind in ("missing_slices", "blank_slices"):
        count = int(rng.integers(2, 4))
        start = centre + side * int(rng.integers(3, 8))
        chosen = tuple(int(i) for i in np.clip(np.arange(start, start + count), 0, n_slices - 1))
        return Artifact(kind, slices=tuple(sorted(set(chosen) - {centre})))
    if kind == "motion":
        return Artifact(kind, slices=tuple(range(n_slices)), strength=float(rng.uniform(0.35, 0.6)))
    first = int(np.clip(centre + rng.integers(-6, 3), 0, n_slices - 1))
    span = tuple(range(first, min(n_slices, first + int(rng.integers(3, 6)))))
    row = float(rng.uniform(160, 300))
    col = float(rng.uniform(150, 300))
    if kind == "metal":
        return Artifact(kind, slices=span, row=row, col=col, radius_px=float(rng.uniform(6, 11) / PIXEL_MM))
    return Artifact(
        kind, slices=span, row=row, col=col, radius_px=float(rng.uniform(25, 40) / PIXEL_MM), strength=4.0
    )


def apply_artifact(signal: np.ndarray, artifact: Artifact) -> None:
    """Modify the noise-free signal volume (slices, rows, cols) in place."""
    if artifact.kind == "blank_slices":
        signal[list(artifact.slices)] = 0.0
    elif artifact.kind == "motion":
        # Ghost copies of the anatomy along the phase-encoding direction (anterior-posterior).
        ghosts = np.zeros_like(signal)
        for k, amp in ((1, 1.0), (2, 0.6), (3, 0.35)):
            for sign in (1, -1):
                ghosts += amp * np.roll(signal, sign * k * signal.shape[2] // 7, axis=2)
        signal += artifact.strength * ghosts / 2.0
    elif artifact.kind == "metal":
        rows, cols = np.ogrid[: signal.shape[1], : signal.shape[2]]
        for offset, index in enumerate(artifact.slices):
            radius = artifact.radius_px * (1.0 - 0.15 * abs(offset - len(artifact.slices) / 2))
            dist = np.hypot(rows - artifact.row, cols - artifact.col)
            rim = (dist >= radius) & (dist < radius * 1.35)
            signal[index][rim] *= 2.8
            signal[index][dist < radius] = 0.0
    elif artifact.kind == "high_contrast":
        r0, c0, h = int(artifact.row), int(artifact.col), int(artifact.radius_px)
        for index in artifact.slices:
            region = signal[index, max(0, r0 - h) : r0 + h, max(0, c0 - h) : c0 + h]
            mean = float(region.mean())
            region[...] = np.clip(mean + artifact.strength * (region - mean), 0.0, None)
