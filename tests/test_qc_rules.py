"""QC rules that must not depend on pain: bright fluid is not an artifact, amplified contrast is."""

from __future__ import annotations

import numpy as np

from kneepain.preprocess import quality
from kneepain.preprocess.config import PreprocessConfig

SPACING_MM = 105.0 / 224


def _knee(rng: np.random.Generator, effusion_px: int = 0) -> np.ndarray:
    """A fat-suppressed window: dark tissue, a thin bright fluid film on every slice, and an
    effusion (fluid too, as bright as the film) of ``effusion_px`` pixels on five slices."""
    stack = rng.normal(120.0, 15.0, (23, 224, 224)).clip(1, None).astype(np.float32)
    stack[:, 60:140, 80:84] = 560.0  # the normal fluid film
    if effusion_px:
        side = int(np.sqrt(effusion_px))
        stack[9:14, 40 : 40 + side, 100 : 100 + side] = rng.normal(580.0, 25.0, (5, side, side))
    return stack


def _flags(stack: np.ndarray) -> dict[str, str]:
    qc = quality.KneeQC()
    quality.check_contrast(stack, np.ones(len(stack), bool), SPACING_MM, PreprocessConfig().qc, qc)
    return qc.reasons


def test_a_large_bright_effusion_is_not_high_contrast() -> None:
    rng = np.random.default_rng(0)
    assert _flags(_knee(rng)) == {}
    # 100 x 100 pixels (about 2,200 mm2) of fluid on five slices: the old rule (1.5 x the 95th
    # percentile, 50 mm2) excluded exactly these knees, most of them painful.
    assert _flags(_knee(rng, effusion_px=100 * 100)) == {}


def test_amplified_contrast_on_a_few_slices_is_flagged() -> None:
    rng = np.random.default_rng(1)
    stack = _knee(rng, effusion_px=60 * 60)
    region = stack[10:13, 30:130, 60:160]
    mean = region.mean()
    stack[10:13, 30:130, 60:160] = np.clip(mean + 4.0 * (region - mean), 0, None)  # as synth's artifact
    assert "high_contrast" in _flags(stack)
