"""`kneepain synth --phantom challenge`: the knee that tests the preprocessing rules, read back from files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.synth.challenge import TRUTH_COLUMNS
from kneepain.synth.truth_writer import read_mask_npz

SUBJECTS = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("challenge") / "cohort"
    args = ["synth", "--out", str(out), "--subjects", str(SUBJECTS), "--seed", "23", "--workers", "1"]
    result = CliRunner().invoke(app, [*args, "--phantom", "challenge"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def knees(cohort: Path) -> pd.DataFrame:
    frame = pd.read_csv(cohort / "truth" / "knees.csv", dtype={"subject_id": str, "artifact": str})
    return frame.fillna({"artifact": "", "lesions": ""})


def _volume(cohort: Path, row: pd.Series) -> np.ndarray:
    files = sorted((cohort / "images" / row["series_path"]).iterdir())
    series = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))
    return np.stack([ds.pixel_array for ds in series]).astype(float)


def test_truth_records_pcl_offset_effusion_volume_and_vessel_masks(cohort: Path, knees: pd.DataFrame) -> None:
    assert set(TRUTH_COLUMNS) <= set(knees.columns)
    summary = json.loads((cohort / "truth" / "summary.json").read_text())
    assert summary["phantom"]["name"] == "challenge"
    for _, row in knees.iterrows():
        has_effusion = any(item.startswith("1:") for item in row["lesions"].split(";") if item)
        assert (row["effusion_ml"] > 0) == has_effusion, row.to_dict()
        assert row["fluid_ml"] > 0  # physiological fluid in every knee, painful or not
        # The PCL slice is the recorded offset away from the middle of the knee's extent (slice
        # index grows laterally in a right knee, medially in a left one).
        toward_index = row["pcl_offset_mm"] if row["side"] == "right" else -row["pcl_offset_mm"]
        assert abs(row["centre_slice"] - row["ml_middle_slice"] - toward_index / 3.0) <= 0.5 + 1e-6
        vessels, labels, kept = read_mask_npz(cohort / "truth" / row["vessel_path"])
        assert labels == {1: "popliteal_vessel"} and len(kept) == row["n_slices"]
        volume = _volume(cohort, row)
        assert vessels.shape == volume.shape and vessels.any()
    assert knees["pcl_offset_mm"].abs().max() > 3.0  # drawn per knee, not always at the middle


def test_contrast_is_fat_suppressed_with_bright_fluid_and_vessels(cohort: Path, knees: pd.DataFrame) -> None:
    row = knees.sort_values("effusion_ml").iloc[-1]
    assert row["effusion_ml"] > 0
    volume = _volume(cohort, row)
    lesions, _, _ = read_mask_npz(cohort / "truth" / row["mask_path"])
    vessels, _, _ = read_mask_npz(cohort / "truth" / row["vessel_path"])
    tissue = np.median(volume[volume > 0.1 * volume.max()])
    effusion = np.median(volume[lesions == 1])
    assert effusion > 2.0 * tissue  # fluid is the brightest tissue, fat and marrow are dark
    assert np.median(volume[vessels == 1]) > 1.3 * tissue


def test_default_phantom_files_have_no_challenge_columns(tmp_path: Path) -> None:
    out = tmp_path / "default"
    result = CliRunner().invoke(
        app, ["synth", "--out", str(out), "--subjects", "1", "--seed", "23", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    columns = pd.read_csv(out / "truth" / "knees.csv").columns
    assert not set(TRUTH_COLUMNS) & set(columns)
    assert "phantom" not in json.loads((out / "truth" / "summary.json").read_text())
    assert not (out / "truth" / "vessels").exists()


def test_unknown_phantom_is_refused_with_the_choices(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["synth", "--out", str(tmp_path / "x"), "--subjects", "1", "--phantom", "fancy"]
    )
    assert result.exit_code == 2
    assert "challenge" in result.output and not (tmp_path / "x").exists()
