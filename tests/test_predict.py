"""`kneepain predict` on a small synthetic cohort: outputs, the pixel -> scanner mapping, refusals.

One module fixture synthesises 3 participants, ingests and preprocesses them (the real cache,
templates and registration table) and writes a tiny random-weight bundle the way the cv stage
does (``write_fold_bundle``). DICOM inputs for the refusals are copies of real synthetic series
with one header or the pixel data changed through pydicom.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.contracts import N_SLICES, WorkPaths, open_cache, read_cache_index
from kneepain.model import build_model, load_bundle, save_bundle
from kneepain.predict import PredictInputError, PredictQCError, predict_person
from kneepain.predict.checks import read_series_headers
from kneepain.predict.geometry import (
    CropGrid,
    SliceGeometry,
    cache_to_patient,
    cache_to_raw_pixel,
    raw_to_stored_pixel,
    stored_pixel_to_patient,
)
from kneepain.preprocess.crop import crop_slices
from kneepain.preprocess.registration import Pose
from kneepain.preprocess.series_io import read_knee_series
from kneepain.train.data import to_input
from kneepain.train.loop import preset
from workfolder import synthetic_work

SUBJECTS = 3
SEED = 3


@dataclass
class Cohort:
    root: Path
    work: Path
    truth: Path
    bundle: Path
    series: pd.DataFrame  # subject_id, side, path
    index: pd.DataFrame  # cache index (qc_pass per subject)
    subject: str  # a participant with both knees and QC passed

    def folder(self, subject: str, side: str) -> Path:
        row = self.series[(self.series["subject_id"] == subject) & (self.series["side"] == side)]
        return Path(row["path"].iloc[0])

    def other_subject(self) -> str:
        return next(s for s in self.index["subject_id"] if s != self.subject)


def write_bundle(
    model: torch.nn.Module,
    work: Path,
    target: Path,
    training: dict | None = None,
    acquisition: dict | None = None,
) -> Path:
    """``model`` (trained or not) as fold 0's bundle of ``work``'s cache, as the cv stage writes it."""
    from kneepain.train.cv import bundle_templates, cache_fingerprint, write_fold_bundle

    fingerprint = cache_fingerprint(work)
    return write_fold_bundle(
        model,
        target,
        fingerprint=fingerprint,
        templates=bundle_templates(work, fingerprint),
        training=training if training is not None else preset("tiny")[1].to_json(),
        cohort_model="A",
        fold=0,
        summary={},
        test_loss=0.0,
        acquisition=acquisition,
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = tmp_path_factory.mktemp("predict")
    work = synthetic_work(root, SUBJECTS, SEED, workers=1)
    index = read_cache_index(WorkPaths(work).cache_index)
    series = pd.read_csv(WorkPaths(work).series_table, dtype={"subject_id": str})
    passed = index.loc[index["qc_pass"].astype(bool), "subject_id"].tolist()
    assert passed, f"no synthetic participant passed QC: {index.to_dict('records')}"
    torch.manual_seed(0)
    bundle = write_bundle(build_model(preset("tiny")[0]).eval(), work, root / "bundle")
    return Cohort(root, work, root / "cohort" / "truth", bundle, series, index, passed[0])


def copy_series(
    source: Path,
    target: Path,
    *,
    edit: Callable[[Any, int], None] | None = None,
    keep: int | None = None,
    name: Callable[[int], str] = lambda i: f"{i + 1:03d}",
) -> Path:
    """Copy a DICOM series (first ``keep`` files), renaming files and editing each dataset."""
    import pydicom

    target.mkdir(parents=True)
    files = sorted(p for p in source.iterdir() if p.is_file())[:keep]
    for i, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        if edit is not None:
            edit(dataset, i)
        dataset.save_as(target / name(i))
    return target


def refusal(cohort: Cohort, left: Path, right: Path, bundle: Path | None = None) -> str:
    with pytest.raises(PredictInputError) as caught:
        predict_person(left, right, bundle or cohort.bundle)
    return str(caught.value)


# -- end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prediction(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The CLI on copies of one participant's series renamed with extensions, plus a stray text file."""
    root = tmp_path_factory.mktemp("inputs")
    folders = {}
    for side in ("left", "right"):
        folders[side] = copy_series(
            cohort.folder(cohort.subject, side), root / side, name=lambda i: f"IMG_{(7 * i) % 97:04d}.dcm"
        )
        (folders[side] / "notes.txt").write_text("not a DICOM file\n")
    out = root / "out"
    args = ["predict", "--left", str(folders["left"]), "--right", str(folders["right"])]
    result = CliRunner().invoke(app, [*args, "--model", str(cohort.bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "NOT A CLINICAL TOOL" in result.output and "P(right knee painful)" in result.output
    return out, json.loads((out / "prediction.json").read_text())


def test_cli_writes_json_summary_and_overlays(cohort: Cohort, prediction: tuple[Path, dict]) -> None:
    import cv2

    out, document = prediction
    assert sorted(p.name for p in out.iterdir()) == [
        "overlay_left.png",
        "overlay_right.png",
        "prediction.json",
        "summary.txt",
    ]
    assert document["patient_id"] == cohort.subject and document["clinical_use"] is False
    assert document["prob_right_painful"] + document["prob_left_painful"] == pytest.approx(1.0)
    assert document["predicted_painful_side"] == (
        "right" if document["prob_right_painful"] >= 0.5 else "left"
    )
    assert set(document["timing_s"]) == {"load_bundle", "read", "preprocess", "network", "outputs", "total"}
    assert document["bundle"]["fold"] == 0 and document["package_version"]
    for side in ("left", "right"):
        knee = document["knees"][side]
        best = knee["best_slice"]
        assert knee["qc_pass"] and knee["centre_method"] == "detected"
        assert 0 <= best["cache_index"] < N_SLICES and best["file"].endswith(".dcm")
        assert len(best["hot_spot"]["patient_mm"]) == 3
        image = cv2.imread(str(out / document["outputs"][f"overlay_{side}"]))
        assert image is not None and image.shape[0] > 224 and image.shape[1] > 2 * 224
    summary = (out / "summary.txt").read_text()
    assert "NOT A CLINICAL TOOL" in summary and "synthetic data" in summary and cohort.subject in summary


def test_probability_equals_the_model_on_the_cache_row(cohort: Cohort, prediction: tuple[Path, dict]) -> None:
    """Same preprocessing as the cache (renamed files and a stray file change nothing)."""
    _, document = prediction
    row = int(cohort.index.loc[cohort.index["subject_id"] == cohort.subject, "row"].iloc[0])
    model, meta = load_bundle(cohort.bundle)
    x = to_input(
        np.array(open_cache(WorkPaths(cohort.work).cache_array)[row][None]),
        meta["architecture"]["input_size"],
    )
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1)[0, 1].item()
    assert document["prob_right_painful"] == pytest.approx(expected, abs=1e-5)


def test_rerun_replaces_an_earlier_prediction_but_not_another_folder(
    cohort: Cohort, prediction: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = prediction
    left, right = cohort.folder(cohort.subject, "left"), cohort.folder(cohort.subject, "right")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PredictInputError, match="non-empty folder"):
        predict_person(left, right, cohort.bundle, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    document = predict_person(left, right, cohort.bundle, out, precision="bf16")
    assert json.loads((out / "prediction.json").read_text())["precision"] == "bf16"
    assert abs(document["prob_right_painful"] - prediction[1]["prob_right_painful"]) < 0.05


def test_an_ensemble_bundle_predicts_its_members_mean(cohort: Cohort, tmp_path: Path) -> None:
    """A paper-mode ensemble goes through the merged-branch fast path member by member."""
    from dataclasses import replace

    from kneepain.model.siamese import ModelConfig

    arch, train = preset("tiny", {"mode": "paper", "members": 2})
    torch.manual_seed(1)
    ensemble = build_model(arch).eval()
    bundle = write_bundle(ensemble, cohort.work, tmp_path / "bundle", train.to_json())
    left, right = cohort.folder(cohort.subject, "left"), cohort.folder(cohort.subject, "right")
    document = predict_person(left, right, bundle, tmp_path / "out")
    row = int(cohort.index.loc[cohort.index["subject_id"] == cohort.subject, "row"].iloc[0])
    x = to_input(np.array(open_cache(WorkPaths(cohort.work).cache_array)[row][None]), arch.input_size)
    with torch.no_grad():
        logits = torch.stack([member(x) for member in ensemble.members]).mean(0)
    assert document["prob_right_painful"] == pytest.approx(torch.softmax(logits, 1)[0, 1].item(), abs=1e-5)
    assert ModelConfig.from_json(json.loads((bundle / "model.json").read_text())["architecture"]) == replace(
        arch, members=2
    )


# -- geometry: cache pixel -> scanner millimetres ---------------------------------------------
def _blob(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid(image: np.ndarray) -> tuple[float, float]:
    weights = np.clip(image - 0.2 * image.max(), 0, None)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return float((rows * weights).sum() / weights.sum()), float((cols * weights).sum() / weights.sum())


@pytest.mark.parametrize(
    ("pose", "crop_centre"),
    [
        (Pose(0.0, 0.0, 0.0), (0.0, 0.0)),
        (Pose(5.5, -7.0, 4.0), (0.0, 0.0)),
        (Pose(-6.0, 8.5, -9.0), (3.0, -2.0)),
    ],
)
def test_cache_pixel_maps_back_through_the_forward_crop(pose: Pose, crop_centre: tuple[float, float]) -> None:
    """A blob sampled by the real crop (crop_slices) is found where the inverse says it came from."""
    raw_shape, spacing = (444, 448), (0.357, 0.357)
    grid = CropGrid(105.0, 224, crop_centre)
    for raw_point in [(230.0, 200.0), (150.5, 300.25), (300.0, 120.0)]:
        raw = _blob(raw_shape, raw_point, sigma=4.0)[None]
        cache = crop_slices(raw, spacing, [0], [pose], grid.crop_mm, grid.image_size, grid.centre_mm)[0]
        found = cache_to_raw_pixel(_centroid(cache), grid, pose, raw_shape, spacing)
        assert np.hypot(found[0] - raw_point[0], found[1] - raw_point[1]) < 0.5  # raw px (0.18 mm)


def test_flipped_orientation_gives_the_same_scanner_point(cohort: Cohort, tmp_path: Path) -> None:
    """A series stored upside down and mirrored (its headers say so) reads to the same volume, and
    the same volume pixel maps to the same patient coordinates through either series' headers."""
    from pydicom.valuerep import format_number_as_ds

    source = cohort.folder(cohort.subject, "right")
    plain = read_series_headers(source)
    rows, cols = plain.rows, plain.columns
    row_dir, col_dir = plain.orientation[:3], plain.orientation[3:]
    sr, sc = plain.spacing_rc_mm

    def flip(dataset: Any, _: int) -> None:
        position = np.asarray(dataset.ImagePositionPatient, float)
        moved = position + (cols - 1) * sc * row_dir + (rows - 1) * sr * col_dir
        dataset.ImagePositionPatient = [format_number_as_ds(float(v)) for v in moved]
        dataset.ImageOrientationPatient = [float(v) + 0.0 for v in np.concatenate([-row_dir, -col_dir])]
        dataset.PixelData = np.ascontiguousarray(dataset.pixel_array[::-1, ::-1]).tobytes()

    flipped_dir = copy_series(source, tmp_path / "flipped", edit=flip)
    flipped = read_series_headers(flipped_dir)
    assert np.array_equal(
        read_knee_series(source, "right").voxels, read_knee_series(flipped_dir, "right").voxels
    )
    for headers in (plain, flipped):
        assert read_knee_series(headers.folder, "right").series_index.tolist() == list(
            read_knee_series(source, "right").series_index
        )
    oriented = (100.0, 340.0)
    points = []
    for headers in (plain, flipped):
        geometry = SliceGeometry(headers.positions[5], headers.orientation, headers.spacing_rc_mm, rows, cols)
        points.append(stored_pixel_to_patient(raw_to_stored_pixel(oriented, geometry), geometry))
    np.testing.assert_allclose(points[0], points[1], atol=1e-3)  # DS strings keep 16 characters
    # On the synthetic (unflipped) geometry: +col runs posterior (+y), +row inferior (-z).
    geometry = SliceGeometry(plain.positions[5], plain.orientation, plain.spacing_rc_mm, rows, cols)
    step = stored_pixel_to_patient((1.0, 1.0), geometry) - stored_pixel_to_patient((0.0, 0.0), geometry)
    np.testing.assert_allclose(step, [0.0, sc, -sr], atol=1e-9)


def test_cache_centre_maps_near_the_true_joint_centre(cohort: Cohort) -> None:
    """Truth check: the cache centre (registration frame origin) of every QC-passed knee lands at the
    synthetic joint centre up to one common frame offset (the template's), not knee-to-knee scatter."""
    from kneepain.contracts import REGISTRATION_TABLE
    from kneepain.preprocess.config import read_config

    config = read_config(WorkPaths(cohort.work).cache_config)
    grid = CropGrid(config.crop_mm, config.image_size, tuple(config.crop_centre_mm))
    registration = pd.read_csv(
        WorkPaths(cohort.work).preprocess / REGISTRATION_TABLE, dtype={"subject_id": str}
    )
    truth = pd.read_csv(cohort.truth / "knees.csv", dtype={"subject_id": str})
    offsets = []
    for subject in cohort.index.loc[cohort.index["qc_pass"].astype(bool), "subject_id"]:
        for side in ("left", "right"):
            headers = read_series_headers(cohort.folder(subject, side))
            mine = registration[(registration["subject_id"] == subject) & (registration["side"] == side)]
            centre = mine[mine["offset"] == 0].iloc[0]
            known = truth[(truth["subject_id"] == subject) & (truth["side"] == side)].iloc[0]
            pose = Pose(centre["rotation_deg"], centre["shift_row_mm"], centre["shift_col_mm"])
            index = int(centre["series_index"])
            geometry = SliceGeometry(
                headers.positions[index],
                headers.orientation,
                headers.spacing_rc_mm,
                headers.rows,
                headers.columns,
            )
            middle = (config.image_size - 1) / 2.0
            found, _ = cache_to_patient((middle, middle), grid, pose, geometry)
            joint = (
                (headers.rows - 1) / 2 + known["shift_row_mm"] / headers.spacing_rc_mm[0],
                (headers.columns - 1) / 2 + known["shift_col_mm"] / headers.spacing_rc_mm[1],
            )
            expected = stored_pixel_to_patient(joint, geometry)
            assert found[0] == pytest.approx(expected[0])  # same slice plane
            offsets.append(found[1:] - expected[1:])
    offsets = np.array(offsets)
    assert np.abs(offsets).max() < 10.0  # mm: the template frame's offset from the anatomy
    assert np.ptp(offsets, axis=0).max() < 3.0  # mm: and the same for every knee


# -- refusals ---------------------------------------------------------------------------------
def test_refuses_two_series_of_one_side_and_a_swapped_pair(cohort: Cohort) -> None:
    other = cohort.other_subject()
    message = refusal(cohort, cohort.folder(cohort.subject, "left"), cohort.folder(other, "left"))
    assert "both are LEFT knee series" in message and str(cohort.folder(other, "left")) in message
    message = refusal(cohort, cohort.folder(cohort.subject, "right"), cohort.folder(cohort.subject, "left"))
    assert "is a RIGHT knee series" in message and "swap --left and --right" in message
    message = refusal(cohort, cohort.folder(cohort.subject, "left"), cohort.folder(cohort.subject, "left"))
    assert "same series" in message


def test_refuses_two_different_people(cohort: Cohort) -> None:
    other = cohort.other_subject()
    message = refusal(cohort, cohort.folder(cohort.subject, "left"), cohort.folder(other, "right"))
    assert "two different people" in message and cohort.subject in message and other in message


def test_refuses_a_non_sagittal_and_a_short_series(cohort: Cohort, tmp_path: Path) -> None:
    left = cohort.folder(cohort.subject, "left")

    def axial(dataset: Any, _: int) -> None:
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]

    message = refusal(
        cohort, left, copy_series(cohort.folder(cohort.subject, "right"), tmp_path / "ax", edit=axial)
    )
    assert "not a sagittal series" in message and "axial" in message and str(tmp_path / "ax") in message
    short = copy_series(cohort.folder(cohort.subject, "right"), tmp_path / "short", keep=N_SLICES - 3)
    message = refusal(cohort, left, short)
    assert f"holds {N_SLICES - 3} slices" in message and str(short) in message


def test_refuses_empty_and_non_dicom_folders(cohort: Cohort, tmp_path: Path) -> None:
    right = cohort.folder(cohort.subject, "right")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "folder is empty" in refusal(cohort, empty, right)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "README").write_text("hello")
    (junk / "scan.dcm").write_bytes(b"\x00" * 300)
    message = refusal(cohort, junk, right)
    assert "none of its 2 file(s) is DICOM" in message and str(junk) in message
    assert "does not exist" in refusal(cohort, tmp_path / "nowhere", right)


def _bundle_variant(cohort: Cohort, target: Path, **changes: Any) -> Path:
    """A copy of the test bundle with model.json / template changes."""
    shutil.copytree(cohort.bundle, target)
    meta = json.loads((target / "model.json").read_text())
    for key, value in changes.get("preprocessing", {}).items():
        meta["preprocessing"][key] = value
    (target / "model.json").write_text(json.dumps(meta))
    if changes.get("drop_templates"):
        (target / "template.npy").unlink()
    if changes.get("other_templates"):
        np.save(target / "template.npy", np.zeros((N_SLICES, 80, 80), np.float32))
    return target


def test_refuses_bundles_whose_preprocessing_cannot_be_reproduced(cohort: Cohort, tmp_path: Path) -> None:
    left, right = cohort.folder(cohort.subject, "left"), cohort.folder(cohort.subject, "right")
    missing = _bundle_variant(cohort, tmp_path / "no_templates", drop_templates=True)
    assert "registration templates not found" in refusal(cohort, left, right, missing)
    other = _bundle_variant(cohort, tmp_path / "other_templates", other_templates=True)
    assert "sha256 differs" in refusal(cohort, left, right, other)
    future = _bundle_variant(cohort, tmp_path / "future", preprocessing={"warp_factor": 9})
    assert "preprocessing record cannot be used" in refusal(cohort, left, right, future)
    window = _bundle_variant(cohort, tmp_path / "window", preprocessing={"half_slices": 5})
    assert "23 slice locations, preprocessing gives 11" in refusal(cohort, left, right, window)
    big = tmp_path / "big"
    meta = json.loads((cohort.bundle / "model.json").read_text())
    templates = np.load(cohort.bundle / "template.npy")
    save_bundle(
        build_model({"width": 0.0625, "input_size": 256, "mode": "joint"}), meta, big, templates=templates
    )
    message = refusal(cohort, left, right, big)
    assert "input size 256 is larger than the preprocessed 224 px" in message and "model.json" in message


def test_quality_check_failure_is_refused_unless_allowed(cohort: Cohort, tmp_path: Path) -> None:
    """Central slices blanked: QC fails; refused by default, predicted and flagged with allow_qc_fail."""
    source = cohort.folder(cohort.subject, "right")
    count = len(list(source.iterdir()))

    def blank(dataset: Any, i: int) -> None:
        if abs(i - count // 2) <= 8:
            dataset.PixelData = np.zeros_like(dataset.pixel_array).tobytes()

    right = copy_series(source, tmp_path / "blank", edit=blank)
    left = cohort.folder(cohort.subject, "left")
    with pytest.raises(PredictQCError, match="quality check failed") as caught:
        predict_person(left, right, cohort.bundle)
    assert str(right) in str(caught.value) and "--allow-qc-fail" in str(caught.value)
    document = predict_person(left, right, cohort.bundle, allow_qc_fail=True)
    assert not document["qc_pass"] and not document["knees"]["right"]["qc_pass"]
    assert any("QUALITY CHECK FAILED" in w for w in document["warnings"])
    assert "QC FAIL" in document["summary"]


def test_cli_refusal_exits_2_and_names_the_folder(cohort: Cohort) -> None:
    right = cohort.folder(cohort.subject, "right")
    args = ["predict", "--left", str(right), "--right", str(right), "--model", str(cohort.bundle)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "same series" in result.output


# -- bundles carry their templates ------------------------------------------------------------
def test_bundle_templates_are_checked_on_save_and_load(cohort: Cohort, tmp_path: Path) -> None:
    from kneepain.model.bundle import BundleError, load_bundle_templates

    meta = json.loads((cohort.bundle / "model.json").read_text())
    templates = np.load(cohort.bundle / "template.npy")
    assert meta["templates"]["sha256"] == meta["preprocessing"]["template_sha256"]
    assert np.array_equal(load_bundle_templates(cohort.bundle), templates)
    model = build_model(meta["architecture"])
    with pytest.raises(BundleError, match="not the ones the preprocessing record pins"):
        save_bundle(model, meta, tmp_path / "b", templates=templates + 1)
    assert not (tmp_path / "b").exists()
    unregistered = {**meta, "preprocessing": {**meta["preprocessing"], "register": False}}
    assert load_bundle_templates(save_bundle(model, unregistered, tmp_path / "c")) is None


def test_a_series_of_another_protocol_is_named_in_the_warnings(cohort: Cohort, tmp_path: Path) -> None:
    """The bundle records the training cohort's acquisition; a series whose slices are twice as
    close (a 23-slice window half as wide) or whose pixels are coarser is warned about."""
    from kneepain.protocol import summarize_acquisition

    own = summarize_acquisition(cohort.series, cohort.index["subject_id"])
    assert own is not None and own["series"] == len(cohort.series)
    left, right = cohort.folder(cohort.subject, "left"), cohort.folder(cohort.subject, "right")
    torch.manual_seed(0)
    model = build_model(preset("tiny")[0]).eval()
    same = write_bundle(model, cohort.work, tmp_path / "same", acquisition=own)
    assert not [w for w in predict_person(left, right, same, tmp_path / "a")["warnings"] if "trained on" in w]
    thin = {
        **own,
        "slice_thickness_mm": own["slice_thickness_mm"] * 2,
        "pixel_spacing_mm": own["pixel_spacing_mm"] / 2,
    }
    other = write_bundle(model, cohort.work, tmp_path / "other", acquisition=thin)
    warnings = predict_person(left, right, other, tmp_path / "b")["warnings"]
    window = 23 * own["slice_thickness_mm"]
    assert any(
        w.startswith("left knee: slices") and f"covers {window:.1f} mm instead of {2 * window:.1f} mm" in w
        for w in warnings
    ), warnings
    assert any(w.startswith("right knee: pixels") for w in warnings), warnings
