"""Cohort selection through `kneepain ingest` on a small fixture tree, and the re-laid tree gives the same."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ingest_fixtures import Participant, write_clinical, write_images
from kneepain.cli import app
from kneepain.contracts import COHORT_COLUMNS, FUNNEL_TABLE, WorkPaths, read_cohort
from kneepain.ingest.cohort import funnel

PEOPLE = [
    Participant("9000001", pain_right="0: No", pain_left="1: Yes", womac_right="0", womac_left="7"),
    Participant(
        "9000002", pain_right="1: Yes", pain_left="0: No", womac_right="4", womac_left="3", sex="1: Male"
    ),
    Participant("9000003", pain_right="1: Yes", pain_left="0: No", womac_right="5.5", womac_left="2.5"),
    Participant("9000004", pain_right="1: Yes", pain_left="0: No", womac_right=".A: Not Expected"),
    Participant("9000005", pain_right="0: No", pain_left="0: No"),
    Participant("9000006", pain_right="1: Yes", pain_left="1: Yes"),
    Participant("9000007", pain_right=".: Missing Form/Incomplete Workbook"),
    Participant("9000008", sides=("right",), cohort_folder="0.E.1"),
    Participant(
        "9000009", pain_right="1", pain_left="0", age="50", bmi=".: Missing Form/Incomplete Workbook"
    ),
]
EXPECTED = {  # subject: (label, model_a, model_b, exclusion, model_b_reason)
    "9000001": (0, True, True, "", ""),
    "9000002": (1, True, False, "", "WOMAC pain difference 1 < 3"),
    "9000003": (1, True, True, "", ""),
    "9000004": (1, True, False, "", "missing WOMAC pain V00WOMKPR (.A: Not Expected)"),
    "9000005": (None, False, False, "no frequent pain", ""),
    "9000006": (None, False, False, "bilateral frequent pain", ""),
    "9000007": (
        None,
        False,
        False,
        "missing pain variable P01KPNREV (.: Missing Form/Incomplete Workbook)",
        "",
    ),
    "9000008": (0, False, False, "no SAG_IW_TSE_LEFT series", ""),
    "9000009": (1, True, True, "", ""),
}


def _ingest(images: Path, clinical: Path, work: Path, *extra: str) -> None:
    args = ["ingest", "--images", str(images), "--clinical", str(clinical), "--out", str(work), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same participants as an OAI-style tree with index and as a re-laid one, both ingested."""
    root = tmp_path_factory.mktemp("cohort")
    write_images(root / "plain" / "images", PEOPLE)
    write_clinical(root / "plain" / "clinical", PEOPLE)
    _ingest(root / "plain" / "images", root / "plain" / "clinical", root / "plain" / "work", "--workers", "1")
    write_images(root / "relaid" / "images", PEOPLE, index=False, nested=True, lower_case=True)
    write_clinical(root / "relaid" / "clinical", PEOPLE, lower_case=True, latin1_crlf=True)
    _ingest(
        root / "relaid" / "images", root / "relaid" / "clinical", root / "relaid" / "work", "--workers", "2"
    )
    return {"plain": root / "plain" / "work", "relaid": root / "relaid" / "work"}


def test_labels_membership_and_reasons(trees: dict[str, Path]) -> None:
    cohort = read_cohort(WorkPaths(trees["plain"]).cohort_table).fillna(
        {"exclusion": "", "model_b_reason": ""}
    )
    assert list(cohort.columns[: len(COHORT_COLUMNS)]) == COHORT_COLUMNS
    for row in cohort.itertuples():
        label, model_a, model_b, exclusion, b_reason = EXPECTED[row.subject_id]
        assert (None if pd.isna(row.label) else int(row.label)) == label, row.subject_id
        assert (bool(row.model_a), bool(row.model_b)) == (model_a, model_b), row.subject_id
        assert (row.exclusion, row.model_b_reason) == (exclusion, b_reason), row.subject_id
    assert len(cohort) == len(EXPECTED)
    by_id = cohort.set_index("subject_id")
    assert by_id.loc["9000003", "womac_right"] == 5.5
    assert by_id.loc["9000001", "kl_left"] == 2 and by_id.loc["9000001", "kl_right"] == 1
    assert pd.isna(by_id.loc["9000009", "bmi"])
    assert "bmi: .: Missing Form/Incomplete Workbook" in by_id.loc["9000009", "missing_values"]
    assert not by_id.loc["9000008", "has_left_series"] and by_id.loc["9000008", "has_right_series"]


def test_funnel_counts_and_qc_rows(trees: dict[str, Path]) -> None:
    table = pd.read_csv(WorkPaths(trees["plain"]).ingest / FUNNEL_TABLE)
    assert table["n"].tolist() == [9, 6, 5, 5, 3]
    assert table.loc[1, ["left_pain", "right_pain"]].tolist() == [2, 4]
    cohort = read_cohort(WorkPaths(trees["plain"]).cohort_table)
    after_qc = funnel(cohort, qc_excluded={"9000003"})
    assert after_qc["step"].tolist()[4:] == [
        "Model A after QC",
        "WOMAC pain difference (Model B)",
        "Model B after QC",
    ]
    assert after_qc["n"].tolist() == [9, 6, 5, 5, 4, 3, 2]


def test_table1_files_exist_with_p_values(trees: dict[str, Path]) -> None:
    ingest = WorkPaths(trees["plain"]).ingest
    table = pd.read_csv(ingest / "table1.csv")
    sex = table[(table["group"] == "Model A") & (table["parameter"] == "Percent female")]
    assert 0.0 <= float(sex["p_value"].iloc[0]) <= 1.0
    assert "Percent female" in (ingest / "table1.md").read_text(encoding="utf-8")


def test_relaid_tree_without_index_gives_the_same_result(trees: dict[str, Path]) -> None:
    plain, relaid = (read_cohort(WorkPaths(trees[k]).cohort_table) for k in ("plain", "relaid"))
    pd.testing.assert_frame_equal(plain, relaid)
    columns = ["subject_id", "side", "n_slices", "rows", "pixel_spacing_row_mm", "orientation", "problem"]
    series = [
        pd.read_csv(WorkPaths(trees[k]).series_table, dtype={"subject_id": str}) for k in ("plain", "relaid")
    ]
    pd.testing.assert_frame_equal(series[0][columns], series[1][columns])
    assert series[1]["path"].str.contains("/package/00m/00m/").all()


def test_pain_variables_are_configurable(trees: dict[str, Path], tmp_path: Path) -> None:
    images, clinical = trees["plain"].parent / "images", trees["plain"].parent / "clinical"
    _ingest(
        images, clinical, tmp_path, "--pain-right", "P01KPNLEV", "--pain-left", "P01KPNREV", "--workers", "1"
    )
    swapped = read_cohort(WorkPaths(tmp_path).cohort_table).set_index("subject_id")
    assert swapped.loc["9000001", "label"] == 1 and swapped.loc["9000003", "label"] == 0
