"""Preprocess's protocol check on real DICOM files: knees of another protocol are named, not resampled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kneepain.preprocess.protocol_check import PROTOCOL_TABLE, ProtocolInputError, check_protocol
from kneepain.protocol import sequence_name
from kneepain.synth.dicom_writer import SeriesInfo, write_series


def _series(folder: Path, description: str, slice_mm: float, pixel_mm: float = 0.357) -> str:
    info = SeriesInfo(
        patient_id="9000001",
        study_date="20050101",
        accession="016600000001",
        study_description="OAI^MR^ENROLLMENT^LEFT",
        series_description=description,
        series_number=10000001,
        laterality="L",
        orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        first_position=(100.0, -40.0, -400.0),
        slice_step=(-slice_mm, 0.0, 0.0),
        pixel_mm=pixel_mm,
        slice_mm=slice_mm,
        uid_seed=f"test-{folder.name}",
    )
    write_series(folder, np.full((4, 8, 8), 100, np.uint16), info)
    return str(folder)


@pytest.fixture()
def knees(tmp_path: Path) -> list[tuple[str, str, str]]:
    return [
        ("9000001", "left", _series(tmp_path / "a", "SAG_IW_TSE_LEFT", 3.0)),
        ("9000001", "right", _series(tmp_path / "b", "Sag_IW_TSE_RIGHT", 3.0)),
        ("9000002", "left", _series(tmp_path / "c", "SAG_3D_DESS_LEFT", 1.5)),
    ]


def test_a_knee_of_another_protocol_is_named_against_the_cohort_median(
    knees: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    reference, warnings = check_protocol(work, knees)
    assert reference["slice_thickness_mm"] == 3.0 and reference["sequence"] == "SAG_IW_TSE"
    table = pd.read_csv(work / "preprocess" / PROTOCOL_TABLE, dtype={"subject_id": str}).fillna("")
    differs = dict(zip(table["subject_id"] + " " + table["side"], table["differs"], strict=True))
    assert differs["9000001 left"] == differs["9000001 right"] == ""
    assert "slice thickness 1.5 mm" in differs["9000002 left"]
    assert "slice spacing 1.5 mm" in differs["9000002 left"]
    assert "sequence SAG_3D_DESS" in differs["9000002 left"]
    assert any("9000002 left" in line and "slice thickness" in line for line in warnings), warnings


def test_a_bundles_training_cohort_is_the_reference_when_given(
    knees: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    acquisition = {
        "series": 10,
        "slice_thickness_mm": 1.5,
        "pixel_spacing_mm": 0.357,
        "sequence": "SAG_3D_DESS",
    }
    (bundle / "model.json").write_text(json.dumps({"acquisition": acquisition}))
    reference, warnings = check_protocol(tmp_path / "work", knees, bundle)
    assert reference["source"].startswith("bundle")
    assert any("2 knee(s)" in line and "slice thickness" in line for line in warnings), warnings
    (bundle / "model.json").write_text(json.dumps({"architecture": {}}))
    with pytest.raises(ProtocolInputError, match="records no training acquisition"):
        check_protocol(tmp_path / "work", knees, bundle)


def test_sequence_name_drops_the_side() -> None:
    assert sequence_name("Sag_IW_TSE_RIGHT ") == "SAG_IW_TSE"
    assert sequence_name("SAG_3D_DESS_LEFT") == "SAG_3D_DESS"
    assert sequence_name("T2 TSE sag") == "T2 TSE SAG"
