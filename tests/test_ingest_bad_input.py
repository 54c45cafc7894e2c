"""Bad input of every kind the issue lists, written as real DICOM and text files.

One tree holds one participant per problem; ingest runs once over it (module fixture) and each
test checks that the right participant is excluded with a message naming the file or series.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ingest_fixtures import CORONAL, Participant, series_folder, write_clinical, write_images, write_series
from kneepain.cli import app
from kneepain.contracts import SERIES_COLUMNS, WorkPaths, read_cohort
from kneepain.ingest import IngestError
from kneepain.ingest.pipeline import run_ingest

GOOD, CORRUPT, TRUNCATED, GAP, DUPLICATE, CORONAL_ID, SPACING, NO_ENROLLEE, NO_CLINICAL = (
    "9000001",
    "9000002",
    "9000003",
    "9000004",
    "9000005",
    "9000006",
    "9000007",
    "9000008",
    "9000009",
)


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tree with one participant per bad-input case, ingested once."""
    root = tmp_path_factory.mktemp("bad")
    people = [Participant(s) for s in (GOOD, CORRUPT, TRUNCATED, GAP, DUPLICATE, CORONAL_ID, SPACING)]
    people.append(Participant(NO_ENROLLEE, in_enrollees=False))
    people.append(Participant(NO_CLINICAL, in_all_clinical=False, in_enrollees=False))
    visit = write_images(root / "images", people)
    by_id = {p.subject_id: p for p in people}

    (series_folder(visit, by_id[CORRUPT], "left") / "002").write_bytes(b"this is not DICOM" * 20)
    truncated = series_folder(visit, by_id[TRUNCATED], "right") / "003"
    truncated.write_bytes(truncated.read_bytes()[:-200])
    (series_folder(visit, by_id[GAP], "left") / "003").unlink()
    copy = series_folder(visit, by_id[DUPLICATE], "left").with_name("19000077")
    shutil.copytree(series_folder(visit, by_id[DUPLICATE], "left"), copy)
    with open(visit / "contents.csv", "a", encoding="utf-8") as index:
        index.write(f"{copy.relative_to(visit).as_posix()},{DUPLICATE},20050101,1,x,SAG_IW_TSE_LEFT\n")
    coronal = series_folder(visit, by_id[CORONAL_ID], "right")
    shutil.rmtree(coronal)
    write_series(coronal, subject=CORONAL_ID, description="SAG_IW_TSE_RIGHT", orientation=CORONAL)
    spacing = series_folder(visit, by_id[SPACING], "left")
    write_series(spacing, subject=SPACING, description="SAG_IW_TSE_LEFT", n_slices=5, skip=(1, 2, 3, 5))
    write_series(spacing, subject=SPACING, description="SAG_IW_TSE_LEFT", n_slices=5, skip=(4,))
    write_series(
        spacing,
        subject=SPACING,
        description="SAG_IW_TSE_LEFT",
        n_slices=4,
        skip=(1, 2, 3),
        spacing=(0.4, 0.5),
    )

    write_clinical(root / "clinical", people)
    work = root / "work"
    run_ingest(root / "images", root / "clinical", work, workers=1)
    return {"root": root, "work": work, "visit": visit}


def _exclusions(work: Path) -> dict[str, str]:
    cohort = read_cohort(WorkPaths(work).cohort_table).fillna({"exclusion": ""})
    return dict(zip(cohort["subject_id"], cohort["exclusion"], strict=True))


def test_good_participant_is_model_a_and_others_are_not(bad_tree: dict[str, Path]) -> None:
    cohort = read_cohort(WorkPaths(bad_tree["work"]).cohort_table)
    members = set(cohort.loc[cohort["model_a"].astype(bool), "subject_id"])
    assert members == {GOOD}
    assert len(cohort) == 9


def test_corrupt_file_is_named(bad_tree: dict[str, Path]) -> None:
    reason = _exclusions(bad_tree["work"])[CORRUPT]
    assert reason.startswith("unreadable series: ")
    assert f"{CORRUPT}/20050101/" in reason and reason.split(":")[1].strip().endswith("/002")


def test_truncated_file_is_named(bad_tree: dict[str, Path]) -> None:
    reason = _exclusions(bad_tree["work"])[TRUNCATED]
    assert "truncated file" in reason and "/003" in reason


def test_missing_slice_is_reported(bad_tree: dict[str, Path]) -> None:
    reason = _exclusions(bad_tree["work"])[GAP]
    assert "missing slice" in reason and "[3]" in reason


def test_duplicated_series_names_both_folders(bad_tree: dict[str, Path]) -> None:
    reason = _exclusions(bad_tree["work"])[DUPLICATE]
    assert reason.startswith("duplicated SAG_IW_TSE_LEFT series")
    assert "19000077" in reason and reason.count(DUPLICATE) >= 2


def test_coronal_series_labelled_sagittal_is_rejected(bad_tree: dict[str, Path]) -> None:
    reason = _exclusions(bad_tree["work"])[CORONAL_ID]
    assert "labelled sagittal but the slices are coronal" in reason
    series = pd.read_csv(WorkPaths(bad_tree["work"]).series_table, dtype={"subject_id": str})
    row = series[(series["subject_id"] == CORONAL_ID) & (series["side"] == "right")]
    assert row["orientation"].tolist() == ["coronal"]


def test_inconsistent_pixel_spacing_names_the_file(bad_tree: dict[str, Path]) -> None:
    reason = _exclusions(bad_tree["work"])[SPACING]
    assert "inconsistent pixel spacing" in reason and "/004" in reason


def test_id_in_one_clinical_file_only_is_excluded_with_the_file_named(bad_tree: dict[str, Path]) -> None:
    reasons = _exclusions(bad_tree["work"])
    assert reasons[NO_ENROLLEE] == f"subject {NO_ENROLLEE} is in AllClinical00.txt but not in Enrollees.txt"
    assert reasons[NO_CLINICAL] == f"subject {NO_CLINICAL} has no row in AllClinical00.txt"


def test_series_table_has_contract_columns_and_problems(bad_tree: dict[str, Path]) -> None:
    series = pd.read_csv(WorkPaths(bad_tree["work"]).series_table, dtype={"subject_id": str})
    assert list(series.columns) == SERIES_COLUMNS
    problems = series.set_index(["subject_id", "side"])["problem"].fillna("")
    assert problems[(GOOD, "left")] == "" and problems[(GOOD, "right")] == ""
    assert problems[(CORRUPT, "left")] != "" and problems[(CORRUPT, "right")] == ""
    assert set(series["subject_id"]) >= {NO_CLINICAL}  # images of unknown people are still listed
    assert not series["path"].str.contains("19999999").any()  # other series are ignored


def test_missing_clinical_column_stops_and_keeps_previous_output(
    bad_tree: dict[str, Path], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(bad_tree["work"], work)
    before = {p.name: p.read_bytes() for p in WorkPaths(work).ingest.iterdir()}
    clinical = tmp_path / "clinical"
    write_clinical(clinical, [Participant(GOOD)], drop_column="V00WOMKPL")
    with pytest.raises(IngestError, match=r"AllClinical00\.txt: missing column\(s\) \['V00WOMKPL'\]"):
        run_ingest(bad_tree["root"] / "images", clinical, work, workers=1)
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--images",
            str(bad_tree["root"] / "images"),
            "--clinical",
            str(clinical),
            "--out",
            str(work),
        ],
    )
    assert result.exit_code == 2
    assert "V00WOMKPL" in result.output
    after = {p.name: p.read_bytes() for p in WorkPaths(work).ingest.iterdir()}
    assert after == before


def test_funnel_separates_present_from_readable_series(bad_tree: dict[str, Path]) -> None:
    table = pd.read_csv(WorkPaths(bad_tree["work"]).ingest / "funnel.csv").set_index("step")
    assert table.loc["participants", "n"] == 9
    assert table.loc["SAG_IW_TSE in both knees", "n"] == 8  # all but the person without clinical data
    assert table.loc["series readable, records complete (Model A before QC)", "n"] == 1


def test_index_problems_are_named(tmp_path: Path) -> None:
    people = [Participant(GOOD), Participant(CORRUPT)]
    visit = write_images(tmp_path / "images", people, index=False)
    write_clinical(tmp_path / "clinical", people)
    bad_index = tmp_path / "index.csv"
    bad_index.write_text("Folder,ParticipantID,StudyDate\n0.C.2/x,9000001,20050101\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"index\.csv: index CSV lacks column\(s\) \['SeriesDescription'\]"):
        run_ingest(
            tmp_path / "images", tmp_path / "clinical", tmp_path / "work", index_csv=bad_index, workers=1
        )
    with pytest.raises(IngestError, match=r"nothere\.csv: index CSV does not exist"):
        run_ingest(
            tmp_path / "images", tmp_path / "clinical", tmp_path / "work", index_csv=tmp_path / "nothere.csv"
        )
    assert not (tmp_path / "work").exists()

    # An index row whose folder is absent: that knee is unusable and the folder is named.
    listed = tmp_path / "contents.csv"
    lines = ["Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription"]
    for person in people:
        for side in ("LEFT", "RIGHT"):
            folder = series_folder(visit, person, side.lower()).relative_to(visit).as_posix()
            if person.subject_id == CORRUPT and side == "RIGHT":
                folder = folder.replace("/2005", "/1999")
            lines.append(f"{folder},{person.subject_id},20050101,1,x,Sag_IW_TSE_{side}")
    listed.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_ingest(tmp_path / "images", tmp_path / "clinical", tmp_path / "work", index_csv=listed, workers=1)
    reasons = _exclusions(tmp_path / "work")
    assert reasons[GOOD] == ""
    assert reasons[CORRUPT].startswith("bad series: ") and "19990101" in reasons[CORRUPT]
    assert reasons[CORRUPT].endswith("series folder does not exist")
