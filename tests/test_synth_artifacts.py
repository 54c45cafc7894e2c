"""Scan artifacts: each kind leaves the mark a quality check should catch, relative to the same clean knee."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from kneepain.synth import acquisition as acq
from kneepain.synth.anatomy import KneeAnatomy
from kneepain.synth.artifacts import Artifact, draw_artifact
from kneepain.synth.dicom_writer import SeriesInfo, write_series
from kneepain.synth.render import KneeImage, render_knee

POSE = acq.Pose(rotation_deg=3.0, shift_row_mm=2.0, shift_col_mm=-4.0, through_plane_mm=1.0, n_slices=36)
SIGNAL = acq.Acquisition(scale=1.0, noise_sd=15.0, bias=(0.0,) * 6)


def _render(artifact: Artifact | None) -> KneeImage:
    return render_knee(np.random.default_rng(3), KneeAnatomy(), POSE, SIGNAL, [], "right", artifact)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return _render(None).pixels.astype(float)


def test_missing_slices_leave_a_gap_in_instance_numbers(tmp_path: Path) -> None:
    image = _render(Artifact("missing_slices", slices=(24, 25)))
    assert image.pixels.shape[0] == 34 and 24 not in image.kept and 25 not in image.kept
    info = SeriesInfo(
        patient_id="9000001", study_date="20050101", accession="016600000001",
        study_description="OAI^MR^ENROLLMENT^RIGHT", series_description="SAG_IW_TSE_RIGHT",
        series_number=10000001, laterality="R", orientation=(0, 1, 0, 0, 0, -1),
        first_position=(-40.0, -80.0, -370.0), slice_step=(-3.0, 0.0, 0.0), pixel_mm=0.357, slice_mm=3.0,
        uid_seed="test",
    )  # fmt: skip
    paths = write_series(tmp_path, image.pixels, info, image.kept)
    numbers = [int(pydicom.dcmread(p).InstanceNumber) for p in paths]
    assert [p.name for p in paths] == [f"{i:03d}" for i in range(1, 35)]
    assert 25 not in numbers and 26 not in numbers and numbers[-1] == 36


def test_blank_slices_hold_only_noise(clean: np.ndarray) -> None:
    pixels = _render(Artifact("blank_slices", slices=(10, 11))).pixels.astype(float)
    assert pixels[10].mean() < 0.2 * clean[10].mean() and pixels[11].mean() < 0.2 * clean[11].mean()
    assert np.array_equal(pixels[12], clean[12])


def test_motion_ghosts_brighten_the_background(clean: np.ndarray) -> None:
    pixels = _render(Artifact("motion", slices=tuple(range(36)), strength=0.5)).pixels.astype(float)
    c = POSE.centre_slice
    dark = clean[c] < 40
    assert dark.mean() > 0.05
    assert pixels[c][dark].mean() > 3 * clean[c][dark].mean()


def test_metal_leaves_a_void_with_a_bright_rim(clean: np.ndarray) -> None:
    artifact = Artifact("metal", slices=(16, 17, 18), row=220.0, col=230.0, radius_px=20.0)
    pixels = _render(artifact).pixels.astype(float)
    core = pixels[17, 210:231, 220:241]
    assert core.mean() < 0.3 * clean[17, 210:231, 220:241].mean()
    assert pixels[17].max() > clean[17].max()


def test_high_contrast_region_has_much_larger_spread(clean: np.ndarray) -> None:
    artifact = Artifact("high_contrast", slices=(18,), row=220.0, col=220.0, radius_px=80.0, strength=4.0)
    pixels = _render(artifact).pixels.astype(float)
    region = (slice(150, 290), slice(150, 290))
    assert pixels[18][region].std() > 2.5 * clean[18][region].std()
    assert np.array_equal(pixels[17], clean[17])


def test_drawn_artifacts_spare_the_centre_slice_and_cover_every_kind() -> None:
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        artifact = draw_artifact(rng, 1.0, 37, 18)
        assert artifact is not None
        kinds.add(artifact.kind)
        if artifact.kind in ("missing_slices", "blank_slices"):
            assert 18 not in artifact.slices and artifact.slices
    assert kinds == {"missing_slices", "blank_slices", "motion", "metal", "high_contrast"}
    assert draw_artifact(np.random.default_rng(0), 0.0, 37, 18) is None
