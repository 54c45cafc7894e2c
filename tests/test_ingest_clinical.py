"""Clinical files: found anywhere in any case, latin-1/CRLF read, coded values and missing codes parsed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingest_fixtures import Participant, write_clinical
from kneepain.ingest import IngestError
from kneepain.ingest.clinical import find_clinical_file, parse_coded, read_clinical, read_kl_grades


def test_parse_coded_reads_codes_numbers_and_keeps_missing_reasons() -> None:
    cells = pd.Series(
        [
            "1: Yes",
            "0: No",
            "6.25",
            "2: 2",
            ".: Missing Form/Incomplete Workbook",
            ".A: Not Expected",
            "",
            "n/a",
        ]
    )
    values, reasons = parse_coded(cells)
    np.testing.assert_array_equal(values[:4], [1.0, 0.0, 6.25, 2.0])
    assert values[4:].isna().all()
    assert reasons.tolist() == [
        "",
        "",
        "",
        "",
        ".: Missing Form/Incomplete Workbook",
        ".A: Not Expected",
        "blank",
        "unparseable value 'n/a'",
    ]


@pytest.mark.parametrize("latin1_crlf", [False, True])
def test_read_clinical_finds_lower_case_files_and_parses_values(tmp_path: Path, latin1_crlf: bool) -> None:
    people = [
        Participant("9000001", womac_left="6.25", sex="2: Female"),
        Participant("9000002", pain_left=".A: Not Expected", womac_right="", sex="1: Male", age="70"),
    ]
    write_clinical(tmp_path / "deep" / "Clinical", people, latin1_crlf=latin1_crlf, lower_case=True)
    clinical = read_clinical(tmp_path)
    assert clinical.files["all_clinical"].name == "allclinical00.txt"
    assert clinical.values.loc["9000001", "womac_left"] == 6.25
    assert clinical.values.loc["9000002", "age"] == 70.0
    assert np.isnan(clinical.values.loc["9000002", "pain_left"])
    assert clinical.missing.loc["9000002", "pain_left"] == ".A: Not Expected"
    assert clinical.missing.loc["9000002", "womac_right"] == "blank"
    assert clinical.sex.to_dict() == {"9000001": "female", "9000002": "male"}


def test_missing_bmi_is_computed_from_weight_and_height(tmp_path: Path) -> None:
    people = [
        Participant("9000001", bmi=".: Missing Form/Incomplete Workbook", weight="80", height="1750"),
        Participant("9000002", bmi="", weight="80", height=".A: Not Expected"),
    ]
    write_clinical(tmp_path, people)
    clinical = read_clinical(tmp_path)
    assert clinical.values.loc["9000001", "bmi"] == pytest.approx(80 / 1.75**2)
    assert "computed from P01WEIGHT and P01HEIGHT" in clinical.missing.loc["9000001", "bmi"]
    assert np.isnan(clinical.values.loc["9000002", "bmi"])
    assert clinical.missing.loc["9000002", "bmi"] == "blank"


def test_kl_grade_prefers_reading_project_15_then_37_then_42(tmp_path: Path) -> None:
    person = Participant("9000001", kl={"right": "2: 2", "left": ".: Missing Form/Incomplete Workbook"})
    extra = [
        ["9000001", "1: Right", "42", "4: 4"],
        ["9000001", "2: Left", "42", "3: 3"],
        ["9000001", "2: Left", "37", "1"],
        ["9000002", "2", "42", "0: 0"],
    ]
    write_clinical(
        tmp_path, [person, Participant("9000002", kl={"right": "", "left": ""})], extra_kl_rows=extra
    )
    grades, path = read_kl_grades(tmp_path)
    assert path.name == "kxr_sq_bu00.txt"
    assert grades.loc["9000001", "kl_right"] == 2  # project 15 beats 42
    assert grades.loc["9000001", "kl_left"] == 1  # 15 missing: 37 beats 42
    assert grades.loc["9000002", "kl_left"] == 0  # only 42 graded it
    assert np.isnan(grades.loc["9000002", "kl_right"])


def test_configurable_pain_variable_missing_from_file_stops_with_file_and_column(tmp_path: Path) -> None:
    write_clinical(tmp_path, [Participant("9000001")])
    with pytest.raises(IngestError, match=r"AllClinical00\.txt: missing column\(s\) \['P01KPNR12'\]"):
        read_clinical(tmp_path, pain_right="P01KPNR12")


def test_missing_clinical_file_and_ambiguous_copies_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no clinical file enrollees"):
        find_clinical_file(tmp_path, "enrollees")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "Enrollees.txt").write_text("ID|P02SEX\n")
    with pytest.raises(IngestError, match="several files named enrollees"):
        find_clinical_file(tmp_path, "enrollees")


def test_duplicated_participant_row_is_recorded(tmp_path: Path) -> None:
    write_clinical(tmp_path, [Participant("9000001"), Participant("9000001"), Participant("9000002")])
    clinical = read_clinical(tmp_path)
    assert set(clinical.duplicated) == {"9000001"}
    assert "AllClinical00.txt" in clinical.duplicated["9000001"]
