"""kneepain and a real PACS (Orthanc + DICOMweb): read a study, predict, write CAMs and findings back.

One module fixture synthesises 2 participants (each knee its own study, with coronal series
beside the sagittal ones, as OAI stores them), preprocesses them for a tiny random-weight bundle
(``write_fold_bundle``, as the cv stage writes it) and uploads one participant's four series to an
Orthanc started for this module by STOW-RS. Everything read back is parsed with pydicom/highdicom
and checked with dciodvfy where dicom3tools is installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.contracts import WorkPaths
from kneepain.dicomweb import connect
from kneepain.export.cam_grid import cam_on_stored_grid
from kneepain.predict import predict_person
from kneepain.predict.geometry import CropGrid, SliceGeometry, cache_to_patient, stored_pixel_to_patient
from kneepain.preprocess.registration import Pose
from pacs_fixtures import OrthancServer, orthanc_server, upload_folders
from test_predict import write_bundle

__all__ = ["orthanc_server"]  # the fixture, imported for pytest

MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
PM_CLASS = "1.2.840.10008.5.1.4.1.1.30"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Pacs:
    server: OrthancServer
    work: Path
    bundle: Path
    subject: str
    folders: dict[str, Path]  # side -> series folder on disk
    studies: dict[str, str]  # side -> StudyInstanceUID
    folder_document: dict[str, Any]  # predict_person on the folders


@pytest.fixture(scope="module")
def pacs(orthanc_server: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Pacs:
    from kneepain.ingest.pipeline import run_ingest
    from kneepain.model import build_model
    from kneepain.preprocess import run_preprocess
    from kneepain.synth.cohort import generate_cohort
    from kneepain.train.loop import preset

    root = tmp_path_factory.mktemp("pacs")
    generate_cohort(root / "cohort", 2, seed=3, workers=1)
    work = root / "work"
    run_ingest(root / "cohort" / "images", root / "cohort" / "clinical", work, workers=1)
    run_preprocess(work, workers=1)
    torch.manual_seed(0)
    bundle = write_bundle(build_model(preset("tiny")[0]).eval(), work, root / "bundle")
    series = pd.read_csv(WorkPaths(work).series_table, dtype={"subject_id": str})
    subject = str(series["subject_id"].iloc[0])
    rows = series[series["subject_id"] == subject].set_index("side")
    folders = {side: Path(rows.loc[side, "path"]) for side in ("left", "right")}
    visit = folders["left"].parent  # the visit folder also holds the coronal series of both knees
    upload_folders(orthanc_server, sorted(p for p in visit.iterdir() if p.is_dir()))
    studies = {
        side: str(pydicom.dcmread(next(iter(sorted(f.iterdir()))), stop_before_pixels=True).StudyInstanceUID)
        for side, f in folders.items()
    }
    assert studies["left"] != studies["right"], "synthetic OAI keeps each knee in its own study"
    document = predict_person(folders["left"], folders["right"], bundle)
    return Pacs(orthanc_server, work, bundle, subject, folders, studies, document)


def run_cli(*args: str, password: str | None = None) -> Any:
    env = {"KNEEPAIN_DICOMWEB_PASSWORD": password} if password is not None else {}
    return CliRunner().invoke(app, ["predict", *args], env=env)


def dicomweb_args(pacs: Pacs, *extra: str) -> list[str]:
    server = pacs.server
    return ["--dicomweb", server.dicomweb, "--user", server.user, "--model", str(pacs.bundle), *extra]


def series_of_study(pacs: Pacs, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    """Every instance of a study on the server, retrieved whole, by SOP Class UID."""
    client = connect(pacs.server.dicomweb, user=pacs.server.user, password=pacs.server.password)
    found: dict[str, list[pydicom.Dataset]] = {}
    for series in client.search_for_series(study_uid):
        series_uid = series["0020000E"]["Value"][0]
        for dataset in client.retrieve_series(study_uid, series_uid):
            found.setdefault(str(dataset.SOPClassUID), []).append(dataset)
    return found


def text_values(item: Any) -> list[str]:
    """Every TEXT content item's value in an SR content tree."""
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found += text_values(child)
    return found


@pytest.fixture(scope="module")
def round_trip(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """predict over DICOMweb with both studies, --store and --dicom-out, as JSON."""
    dicom_out = tmp_path_factory.mktemp("round_trip") / "dicom"
    args = dicomweb_args(
        pacs, "--study", pacs.studies["left"], "--study", pacs.studies["right"], "--store", "--json"
    )
    result = run_cli(*args, "--dicom-out", str(dicom_out), password=pacs.server.password)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout[result.stdout.index("{") :])
    return document, dicom_out


def test_round_trip_store_retrieve_matches_the_folder_prediction(
    pacs: Pacs, round_trip: tuple[dict[str, Any], Path]
) -> None:
    document, _ = round_trip
    expected = pacs.folder_document
    assert abs(document["prob_right_painful"] - expected["prob_right_painful"]) < 1e-6
    assert abs(document["prob_left_painful"] - expected["prob_left_painful"]) < 1e-6
    assert document["dicomweb"]["series"]["left"]["description"] == "SAG_IW_TSE_LEFT"
    assert len(document["dicomweb"]["stored"]) == 6
    import highdicom as hd

    for side in ("left", "right"):
        on_server = series_of_study(pacs, pacs.studies[side])
        images = on_server.pop(MR_CLASS)
        sources = {str(d.SOPInstanceUID): d for d in images if d.SeriesDescription.startswith("SAG")}
        descriptions = {str(d.SeriesDescription) for d in images}
        assert descriptions == {f"SAG_IW_TSE_{side.upper()}", f"COR_IW_TSE_{side.upper()}"}
        assert sorted(on_server) == sorted([PM_CLASS, SR_CLASS, SC_CLASS])  # one object of each, no more
        (pm,), (sr,), (sc,) = on_server[PM_CLASS], on_server[SR_CLASS], on_server[SC_CLASS]
        source = next(iter(sources.values()))
        for made in (pm, sr, sc):  # the source study's patient and study identifiers
            for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
                assert str(made.get(keyword)) == str(source.get(keyword)), (side, keyword)
        # parametric-map frames: one source slice each, none twice, same place and frame of reference
        assert pm.FrameOfReferenceUID == source.FrameOfReferenceUID
        referenced = []
        for frame in pm.PerFrameFunctionalGroupsSequence:
            (ref,) = frame.DerivationImageSequence[0].SourceImageSequence
            uid = str(ref.ReferencedSOPInstanceUID)
            referenced.append(uid)
            position = frame.PlanePositionSequence[0].ImagePositionPatient
            np.testing.assert_allclose(
                np.asarray(position, float), np.asarray(sources[uid].ImagePositionPatient, float), atol=1e-3
            )
        assert len(referenced) == len(set(referenced)) == int(pm.NumberOfFrames) >= 2 * 11 + 1
        assert set(referenced) <= set(sources)
        assert (pm.Rows, pm.Columns) == (source.Rows, source.Columns)
        # the report: probability as the folder path gave it, hot spot point as predict gave it
        report = hd.sr.Comprehensive3DSR.from_dataset(sr)
        (group,) = report.content.get_planar_roi_measurement_groups()
        point = np.asarray(group.roi.value, float).reshape(3)
        best = expected["knees"][side]["best_slice"]
        assert np.linalg.norm(point - np.asarray(best["hot_spot"]["patient_mm"])) < 0.5
        assert str(group.roi.ReferencedFrameOfReferenceUID) == str(source.FrameOfReferenceUID)
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        probability = values["Probability that this knee is the painful one"]
        assert abs(float(probability) - expected[f"prob_{side}_painful"]) < 1e-6
        slice_measure = next(
            m for m in group.get_measurements() if m.name.meaning.startswith("Mean class activation")
        )
        (image,) = slice_measure.referenced_images
        best_uid = str(image.referenced_sop_instance_uid)
        assert int(sources[best_uid].InstanceNumber) == best["instance_number"]
        assert best_uid in referenced  # the highest-CAM slice is one of the map's frames
        # the point lies in that slice's plane
        normal = np.cross(*np.asarray(source.ImageOrientationPatient, float).reshape(2, 3))
        offset = point - np.asarray(sources[best_uid].ImagePositionPatient, float)
        assert abs(float(offset @ normal)) < 0.5
        assert any("NOT FOR CLINICAL USE" in text for text in text_values(sr))
        assert str(pm.ContentQualification) == "RESEARCH"


def test_written_objects_validate(round_trip: tuple[dict[str, Any], Path]) -> None:
    """Every object reads back with pydicom/highdicom; dciodvfy (dicom3tools) reports no Error."""
    import highdicom as hd

    _, folder = round_trip
    files = sorted(folder.glob("*.dcm"))
    assert [f.name for f in files] == [
        f"{side}_{kind}.dcm"
        for side in ("left", "right")
        for kind in ("cam_map", "findings_sr", "overlay_sc")
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["objects"]) == 6
    for path in files:
        dataset = pydicom.dcmread(path)
        if str(dataset.SOPClassUID) == PM_CLASS:
            pm = hd.pm.ParametricMap.from_dataset(dataset)
            assert pm.pixel_array.dtype == np.float32 and np.isfinite(pm.pixel_array).all()
        elif str(dataset.SOPClassUID) == SR_CLASS:
            hd.sr.srread(path)
        else:
            assert dataset.pixel_array.shape[-1] == 3
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools): objects not IOD-checked")
    for path in files:
        checked = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)


def test_patient_alone_finds_both_studies(pacs: Pacs, round_trip: tuple[dict[str, Any], Path]) -> None:
    """Also with kneepain's own stored objects (round_trip) now in both studies: they are not candidates."""
    result = run_cli(*dicomweb_args(pacs, "--patient", pacs.subject, "--json"), password=pacs.server.password)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout[result.stdout.index("{") :])
    assert abs(document["prob_right_painful"] - pacs.folder_document["prob_right_painful"]) < 1e-6
    chosen = document["dicomweb"]["series"]
    assert {side: chosen[side]["description"] for side in chosen} == {
        "left": "SAG_IW_TSE_LEFT",
        "right": "SAG_IW_TSE_RIGHT",
    }


def one_line_refusal(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def test_study_without_a_right_knee_series_is_refused(pacs: Pacs) -> None:
    result = run_cli(*dicomweb_args(pacs, "--study", pacs.studies["left"]), password=pacs.server.password)
    message = one_line_refusal(result)
    assert "no sagittal RIGHT knee series" in message and "COR_IW_TSE_LEFT: coronal" in message
    result = run_cli(*dicomweb_args(pacs, "--study", "1.2.3.4.5"), password=pacs.server.password)
    assert "study 1.2.3.4.5 is not on the server" in one_line_refusal(result)


def test_wrong_credentials_and_token_are_refused(pacs: Pacs) -> None:
    message = one_line_refusal(run_cli(*dicomweb_args(pacs, "--patient", pacs.subject), password="wrong"))
    assert "HTTP 401" in message and "--user" in message
    args = ["--dicomweb", pacs.server.dicomweb, "--token", "not-a-token", "--patient", pacs.subject]
    assert "HTTP 401" in one_line_refusal(run_cli(*args, "--model", str(pacs.bundle)))


def test_server_down_and_silent_server_are_refused(pacs: Pacs, tmp_path: Path) -> None:
    from pacs_fixtures import free_port

    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    args = ["--dicomweb", down, "--patient", "X", "--model", str(pacs.bundle)]
    assert "cannot reach the DICOMweb server" in one_line_refusal(run_cli(*args))
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        args = ["--dicomweb", url, "--patient", "X", "--timeout", "0.5", "--model", str(pacs.bundle)]
        message = one_line_refusal(run_cli(*args))
    assert "no answer within 0.5 s" in message
    mixed = ["--left", str(pacs.folders["left"]), "--right", str(pacs.folders["right"])]
    message = one_line_refusal(run_cli(*mixed, "--model", str(pacs.bundle), "--store"))
    assert "--store" in message and "--dicomweb" in message


def test_folder_predict_writes_dicom_and_keeps_a_foreign_folder(pacs: Pacs, tmp_path: Path) -> None:
    folders = ["--left", str(pacs.folders["left"]), "--right", str(pacs.folders["right"])]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me\n")
    result = run_cli(*folders, "--model", str(pacs.bundle), "--dicom-out", str(foreign))
    assert "manifest.json" in one_line_refusal(result)
    assert (foreign / "notes.txt").read_text() == "keep me\n"
    result = run_cli(*folders, "--model", str(pacs.bundle), "--dicom-out", str(tmp_path / "dicom"))
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "dicom").glob("*.dcm"))) == 6


@pytest.mark.parametrize("flipped", [False, True])
def test_cam_on_the_stored_grid_peaks_where_the_cache_peak_maps(flipped: bool) -> None:
    """A one-peak CAM resampled onto a stored slice peaks at the patient point cache_to_patient gives."""
    grid = CropGrid(105.0, 224, (3.0, -2.0))
    pose = Pose(rotation_deg=7.0, shift_row_mm=4.0, shift_col_mm=-6.0)
    orientation = np.array([0, 1, 0, 0, 0, -1], float) * (-1 if flipped else 1)
    geometry = SliceGeometry(np.array([10.0, -80.0, 60.0]), orientation, (0.357, 0.357), 444, 448)
    rows, cols = np.mgrid[0:28, 0:28]
    cam = np.exp(-((rows - 9.0) ** 2 + (cols - 17.0) ** 2) / 2.0).astype(np.float32)
    stored = cam_on_stored_grid(cam, grid, pose, geometry)
    assert stored.shape == (444, 448) and stored.dtype == np.float32
    peak = np.unravel_index(int(np.argmax(stored)), stored.shape)
    cache_peak = ((9 + 0.5) * 224 / 28 - 0.5, (17 + 0.5) * 224 / 28 - 0.5)  # cell centre on the cache grid
    expected, _ = cache_to_patient(cache_peak, grid, pose, geometry)
    found = stored_pixel_to_patient((float(peak[0]), float(peak[1])), geometry)
    assert np.linalg.norm(found - expected) < 1.0  # within ~3 stored pixels of 0.357 mm
    assert stored[0, 0] == 0.0  # outside the crop


def test_orthanc_explorer_lists_the_kneepain_series(
    pacs: Pacs, round_trip: tuple[dict[str, Any], Path], chromium: Any, tmp_path: Path
) -> None:
    """Orthanc's own web interface shows the stored kneepain series beside the original ones."""
    server = pacs.server
    context = chromium.new_context(
        http_credentials={"username": server.user, "password": server.password},
        viewport={"width": 1280, "height": 800},
    )
    try:
        import requests

        found = requests.post(
            f"{server.root}/tools/find",
            json={"Level": "Study", "Query": {"StudyInstanceUID": pacs.studies["left"]}},
            auth=(server.user, server.password),
            timeout=10,
        ).json()
        page = context.new_page()
        page.goto(f"{server.root}/app/explorer.html#study?uuid={found[0]}")
        page.wait_for_selector("text=kneepain CAM left knee", timeout=15000)
        text = page.inner_text("body")
        assert "SAG_IW_TSE_LEFT" in text and "kneepain findings left knee" in text
        page.screenshot(path=str(tmp_path / "orthanc_study.png"))
    finally:
        context.close()


def test_cam_dicom_out_exports_every_test_subject_of_a_run(pacs: Pacs, tmp_path: Path) -> None:
    """A run's test subjects, each from its source series with its fold's bundle, as DICOM per subject."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"work": str(pacs.work), "run_id": "r1"}))
    subjects = sorted(
        pd.read_csv(WorkPaths(pacs.work).series_table, dtype={"subject_id": str})["subject_id"].unique()
    )
    predictions = pd.DataFrame(
        {"subject_id": subjects, "fold": 0, "split": "test", "prob_right": 0.5, "label": 1}
    )
    predictions.to_csv(run / "predictions.csv", index=False)
    shutil.copytree(pacs.bundle, run / "fold_00" / "bundle")
    out = tmp_path / "dicom"
    result = CliRunner().invoke(app, ["cam", str(run), "--dicom-out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["objects"]) == 6 * len(subjects) == len(list(out.glob("*/*.dcm")))
    mine = [o for o in manifest["objects"] if o["subject_id"] == pacs.subject]
    assert abs(mine[0]["prob_right_painful"] - pacs.folder_document["prob_right_painful"]) < 1e-6
    pm = pydicom.dcmread(out / pacs.subject / "left_cam_map.dcm")
    source_uids = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in pacs.folders["left"].iterdir()
    }
    referenced = {
        str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for f in pm.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= source_uids and len(referenced) == int(pm.NumberOfFrames)
    # a source series gone from disk is named, and the earlier export stays whole
    table = WorkPaths(pacs.work).series_table
    original = table.read_text()
    try:
        table.write_text(original.replace(str(pacs.folders["right"]), str(tmp_path / "gone")))
        result = CliRunner().invoke(app, ["cam", str(run), "--dicom-out", str(out)])
        assert result.exit_code == 2, result.output
        assert f"subject {pacs.subject} has no readable right knee series folder" in " ".join(
            result.output.split()
        )
    finally:
        table.write_text(original)
    assert len(list(out.glob("*/*.dcm"))) == 6 * len(subjects)
