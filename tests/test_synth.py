"""`kneepain synth` end to end: a small cohort written through the CLI and read back as a reader would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.synth import generate_cohort
from kneepain.synth.difficulty import shortcut_auc
from kneepain.synth.truth_writer import read_mask_npz

SUBJECTS = 6
INDEX_COLUMNS = ["Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "cohort"
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--subjects", str(SUBJECTS), "--seed", "5"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def index(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "images" / "00m" / "contents.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def knees(cohort: Path) -> pd.DataFrame:
    return pd.read_csv(cohort / "truth" / "knees.csv", dtype={"subject_id": str, "artifact": str}).fillna(
        {"artifact": "", "lesions": ""}
    )


def _series(cohort: Path, folder: str) -> list[pydicom.Dataset]:
    files = sorted((cohort / "images" / "00m" / folder).iterdir())
    return sorted((pydicom.dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))


def test_layout_and_index_match_oai(cohort: Path, index: pd.DataFrame) -> None:
    assert list(index.columns) == INDEX_COLUMNS
    assert index["ParticipantID"].nunique() == SUBJECTS
    for row in index.itertuples():
        assert re.fullmatch(r"0\.(C\.2|E\.1)/9\d{6}/\d{8}/1\d{7}", row.Folder), row.Folder
        _, pid, date, _ = row.Folder.split("/")
        assert (pid, date) == (row.ParticipantID, row.StudyDate)
        files = sorted(p.name for p in (cohort / "images" / "00m" / row.Folder).iterdir())
        assert files == [f"{i:03d}" for i in range(1, len(files) + 1)]  # no extension
    studies = set(index["StudyDescription"])
    assert studies <= {"OAI^MR^ENROLLMENT^LEFT", "OAI^MR^ENROLLMENT^RIGHT "}  # trailing space after RIGHT
    assert "OAI^MR^ENROLLMENT^RIGHT " in studies
    for study, group in index.groupby(["ParticipantID", "StudyDescription"]):
        descriptions = set(group["SeriesDescription"])
        side = study[1].strip().rsplit("^", 1)[1]
        assert descriptions == {f"SAG_IW_TSE_{side}", f"COR_IW_TSE_{side}"}  # another series to skip
    for name in ("truth/subjects.csv", "truth/knees.csv", "truth/summary.json"):
        assert (cohort / name).is_file()
    clinical = cohort / "clinical"
    assert (clinical / "AllClinical_ASCII" / "AllClinical00.txt").is_file()
    assert (clinical / "General_ASCII" / "Enrollees.txt").is_file()
    assert (
        clinical / "X-Ray Image Assessments_ASCII" / "Semi-Quant Scoring_ASCII" / "kxr_sq_bu00.txt"
    ).is_file()


def test_sagittal_series_tags_and_geometry(cohort: Path, index: pd.DataFrame, knees: pd.DataFrame) -> None:
    sag = index[index["SeriesDescription"].str.startswith("SAG_IW_TSE")]
    assert len(sag) == len(knees)
    for row in sag.itertuples():
        side = row.SeriesDescription.rsplit("_", 1)[1].lower()
        truth = knees[(knees["subject_id"] == row.ParticipantID) & (knees["side"] == side)].iloc[0]
        series = _series(cohort, row.Folder)
        assert len(series) == truth["n_slices"]
        if not truth["artifact"]:
            assert 35 <= len(series) <= 40
        normal = np.cross(series[0].ImageOrientationPatient[:3], series[0].ImageOrientationPatient[3:])
        positions = []
        for ds in series:
            assert ds.PatientID == row.ParticipantID and ds.StudyDate == row.StudyDate
            assert ds.AccessionNumber == row.Barcode
            assert ds.SeriesDescription == row.SeriesDescription
            assert ds.StudyDescription == row.StudyDescription.strip()
            assert (ds.Rows, ds.Columns) == (444, 448)
            assert [float(v) for v in ds.PixelSpacing] == [0.357, 0.357]
            assert float(ds.SliceThickness) == 3.0
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.pixel_array.dtype == np.uint16
            assert [float(v) for v in ds.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]
            along = float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal))
            assert along == pytest.approx(float(ds.SliceLocation), abs=1e-3)
            positions.append((int(ds.InstanceNumber), along))
        numbers, along = np.array(positions).T
        assert np.allclose(np.diff(along), 3.0 * np.diff(numbers))  # 3 mm per InstanceNumber step


def test_simpleitk_reads_the_series_with_the_same_geometry(cohort: Path, knees: pd.DataFrame) -> None:
    row = knees.iloc[0]
    reader = SimpleITK.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(cohort / "images" / row["series_path"]))
    reader.SetFileNames(names)
    image = reader.Execute()
    assert image.GetSize() == (448, 444, int(row["n_slices"]))
    assert image.GetSpacing() == pytest.approx((0.357, 0.357, 3.0))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction[:, 2], [-1, 0, 0])  # slice normal toward the patient's right


def test_left_and_right_series_run_in_opposite_anatomical_directions(
    cohort: Path, index: pd.DataFrame
) -> None:
    """Slice index runs toward the patient's right in both series: lateral for right, medial for left."""
    for pid, group in index[index["SeriesDescription"].str.startswith("SAG")].groupby("ParticipantID"):
        lateral_step = {}
        for row in group.itertuples():
            series = _series(cohort, row.Folder)
            x = [float(ds.ImagePositionPatient[0]) for ds in series]
            side = row.SeriesDescription.rsplit("_", 1)[1]
            assert (np.mean(x) < 0) == (side == "RIGHT"), pid  # LPS: the right knee lies at -x
            lateral = -1.0 if side == "RIGHT" else 1.0  # lateral is away from the body's midline
            lateral_step[side] = np.sign((x[1] - x[0]) * lateral)
        if len(lateral_step) == 2:
            assert lateral_step["RIGHT"] == 1 and lateral_step["LEFT"] == -1


def _pixel_of(row: pd.Series, y_mm: float, z_mm: float) -> tuple[int, int]:
    """Image pixel of an anatomical point under the documented pose convention."""
    theta = np.radians(row["rotation_deg"])
    along_col, along_row = y_mm, -z_mm
    dc = along_col * np.cos(theta) + along_row * np.sin(theta)
    dr = -along_col * np.sin(theta) + along_row * np.cos(theta)
    col = (448 - 1) / 2 + (dc + row["shift_col_mm"]) / 0.357
    rows = (444 - 1) / 2 + (dr + row["shift_row_mm"]) / 0.357
    return round(rows), round(col)


def test_pcl_is_dark_at_the_truth_centre_slice_only(cohort: Path, knees: pd.DataFrame) -> None:
    for _, row in knees[knees["artifact"] == ""].iterrows():
        series = _series(cohort, row["series_path"].removeprefix("00m/"))
        volume = np.stack([ds.pixel_array for ds in series]).astype(float)
        bs, c = row["bone_scale"], int(row["centre_slice"])
        # Mid-point of the PCL arc (17 mm about (0, 2) at 30 degrees): posterior notch.
        r, col = _pixel_of(row, 17 * np.cos(np.radians(30)) * bs, (2 + 17 * np.sin(np.radians(30))) * bs)
        patch = volume[:, r - 2 : r + 3, col - 2 : col + 3].mean(axis=(1, 2))
        condyles = (patch[c - 4] + patch[c + 4]) / 2  # medial and lateral condyle marrow
        assert patch[c] < 0.4 * condyles, (row["subject_id"], row["side"], patch[c - 4 : c + 5])
        assert 15 <= c <= 22


def test_masks_match_series_and_stay_central(cohort: Path, knees: pd.DataFrame) -> None:
    seen = set()
    for _, row in knees.iterrows():
        mask, labels, kept = read_mask_npz(cohort / "truth" / row["mask_path"])
        assert labels == {
            1: "effusion_synovitis",
            2: "bone_marrow_lesion",
            3: "hoffa_synovitis",
            4: "cartilage_loss",
            5: "meniscal_damage",
        }
        assert mask.shape == (row["n_slices"], 444, 448) and len(kept) == row["n_slices"]
        listed = {int(item.split(":")[0]) for item in row["lesions"].split(";") if item}
        present = set(np.unique(mask).tolist()) - {0}
        assert present == listed, (row["subject_id"], row["side"], listed, present)
        seen |= present
        slices = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        if slices.size:
            assert np.abs(slices - row["centre_slice"]).max() <= 11
            # In-plane: inside the 105 mm square around the joint centre, in the knee's own frame.
            _, rr, cc = np.nonzero(mask)
            dr = (rr - (444 - 1) / 2) * 0.357 - row["shift_row_mm"]
            dc = (cc - (448 - 1) / 2) * 0.357 - row["shift_col_mm"]
            t = np.radians(row["rotation_deg"])
            y, z = dc * np.cos(t) - dr * np.sin(t), -(dc * np.sin(t) + dr * np.cos(t))
            assert max(np.abs(y).max(), np.abs(z).max()) <= 52.5
    assert len(seen) >= 4  # the small cohort shows most lesion types


def test_clinical_files_use_oai_codes_and_agree_with_truth(cohort: Path) -> None:
    clinical = cohort / "clinical"
    allc = pd.read_csv(clinical / "AllClinical_ASCII" / "AllClinical00.txt", sep="|", dtype=str)
    assert list(allc.columns) == [
        "ID", "V00AGE", "P01BMI", "P01WEIGHT", "P01HEIGHT", "P01KPNREV", "P01KPNLEV", "V00WOMKPR", "V00WOMKPL"
    ]  # fmt: skip
    enrol = pd.read_csv(clinical / "General_ASCII" / "Enrollees.txt", sep="|", dtype=str)
    kxr = pd.read_csv(
        clinical / "X-Ray Image Assessments_ASCII" / "Semi-Quant Scoring_ASCII" / "kxr_sq_bu00.txt",
        sep="|",
        dtype=str,
    )
    truth = pd.read_csv(cohort / "truth" / "subjects.csv", dtype={"subject_id": str}).set_index("subject_id")
    assert set(allc["ID"]) == set(truth.index) == set(enrol["ID"])
    for row in allc.itertuples():
        t = truth.loc[row.ID]
        for column, value in (("P01KPNREV", t["pain_right"]), ("P01KPNLEV", t["pain_left"])):
            cell = getattr(row, column)
            assert cell.startswith(".") or cell == ("1: Yes" if value else "0: No")
    assert set(enrol["P02SEX"]) <= {"1: Male", "2: Female"}
    assert set(kxr["SIDE"]) <= {"1: Right", "2: Left", "1", "2"}
    primary = kxr[kxr["READPRJ"] == "15"]
    assert len(primary) == 2 * SUBJECTS
    for row in primary.itertuples():
        side = "right" if row.SIDE.startswith("1") else "left"
        assert (
            row.V00XRKL.startswith(".") or int(row.V00XRKL.split(":")[0]) == truth.loc[row.ID, f"kl_{side}"]
        )


def test_summary_reports_difficulty_recomputable_from_pixels(cohort: Path, knees: pd.DataFrame) -> None:
    summary = json.loads((cohort / "truth" / "summary.json").read_text())
    subjects = pd.read_csv(cohort / "truth" / "subjects.csv", dtype={"subject_id": str})
    assert summary["counts"]["subjects"] == SUBJECTS and summary["seed"] == 5
    means = {}
    for _, row in knees.iterrows():
        series = _series(cohort, row["series_path"].removeprefix("00m/"))
        means[(row["subject_id"], row["side"])] = float(np.mean([ds.pixel_array.mean() for ds in series]))
    labelled = subjects[subjects["label"].notna()]
    labelled = labelled[[(s, "left") in means and (s, "right") in means for s in labelled["subject_id"]]]
    expected = shortcut_auc(
        labelled["label"].to_numpy(int),
        np.array([means[(s, "right")] for s in labelled["subject_id"]]),
        np.array([means[(s, "left")] for s in labelled["subject_id"]]),
    )
    assert summary["shortcut_auc"] == pytest.approx(expected, abs=1e-9)
    # Why the shortcut stays weak: a knee's mean intensity follows its random gain, not its lesions.
    clean = knees[knees["artifact"] == ""]
    mean = np.array([means[(s, side)] for s, side in zip(clean["subject_id"], clean["side"], strict=True)])
    gain = np.corrcoef(mean, clean["intensity_scale"])[0, 1]
    assert gain > 0.6 and abs(np.corrcoef(mean, clean["lesion_burden"])[0, 1]) < gain
    assert summary["oracle_auc"] is None or 0.0 <= summary["oracle_auc"] <= 1.0


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    first = generate_cohort(tmp_path / "a", 2, seed=11, workers=1)
    second = generate_cohort(tmp_path / "b", 2, seed=11, workers=2)
    assert first == second
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 80
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_refuses_to_overwrite_a_foreign_folder_and_keeps_it(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="precious"):
        generate_cohort(target, 1, seed=1)
    assert (target / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="subjects"):
        generate_cohort(tmp_path / "none", 0, seed=1)


def test_contact_sheet_of_a_knee_is_a_png_with_the_slices(
    cohort: Path, knees: pd.DataFrame, tmp_path: Path
) -> None:
    import matplotlib.image

    from kneepain.synth.contact_sheet import sheet_from_cohort

    row = knees.iloc[0]
    out = sheet_from_cohort(cohort, row["subject_id"], row["side"], tmp_path / "sheet.png", masks=True)
    image = matplotlib.image.imread(out)
    assert image.ndim == 3 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # not blank
    with pytest.raises(ValueError, match="no left knee series for subject 0000000"):
        sheet_from_cohort(cohort, "0000000", "left", tmp_path / "none.png")
