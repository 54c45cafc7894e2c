"""The CAM stage on a small real run folder: out-of-fold maps, the best-slice rule, overlays, localization.

The bundles here hold a tiny deterministic model whose CAM is the average-pooled slice times a
per-fold factor: the planted bright spot must come back as the best slice and the hot spot, and
each subject's maps must come from the fold that held it out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from kneepain.cam.compute import CamInputError, CamOutputs, read_cam_outputs, read_run
from kneepain.cam.localization import (
    area_above_half,
    cells_to_pixels,
    chance_hit_rate,
    constant_point_hits,
    energy_share,
    evidence_priors,
    folder_mask_source,
    hit_at,
    hit_rate_interval,
    hot_spot,
    lesion_at_hot_spot,
    localize,
    paired_hits,
    peak_location,
    pointing_hit,
    reachable_cells,
    summarize,
)
from kneepain.cam.stage import run_cam_stage
from kneepain.cli import app
from kneepain.model import Bundle, InputSpec

SUBJECTS = ["9000001", "9000002", "9000003", "9000004"]
FOLDS = [0, 1, 0, 1]
LABELS = [1, 0, 1, 0]  # right, left, right, left painful
PROBS = [0.8, 0.3, 0.4, 0.2]  # subject 3 predicted wrong
SPOT_SLICE = [7, 15, 3, 20]
SPOT = (96, 56)  # row, col of the planted bright square: exactly CAM cell (12, 7)


class PooledIntensityNet(torch.nn.Module):
    """A stand-in bundle model: CAM = 8x8 average-pooled intensity x fold factor (28 x 28 for 224)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward_with_cams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, knees, s, h, w = x.shape
        cams = torch.nn.functional.avg_pool2d(x.reshape(b * knees * s, 1, h, w), 8)
        cams = cams.reshape(b, knees, s, h // 8, w // 8) * self.factor
        return cams.mean(dim=(2, 3, 4)), cams


def load_test_bundle(path: Path) -> Bundle:
    """Bundle loader for the stand-in model: the factor (and input size) are recorded in model.json."""
    meta = json.loads((path / "model.json").read_text())
    return Bundle(path, PooledIntensityNet(meta["factor"]), meta, InputSpec(meta.get("input_size", 224), 23))


def make_run(root: Path) -> Path:
    """WORK/preprocess cache + index and WORK/runs/r1 with predictions and two fold bundles."""
    work = root / "work"
    pre = work / "preprocess"
    pre.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [2, 0, 3, 1]  # cache rows deliberately not in subject order
    cache = rng.integers(0, 40, size=(4, 2, 23, 224, 224), dtype=np.uint8)
    for row, label, k in zip(rows, LABELS, SPOT_SLICE, strict=True):
        r, c = SPOT
        cache[row, label, k, r : r + 8, c : c + 8] = 255  # painful knee = index label (0 left, 1 right)
    np.save(pre / "cache.npy", cache)
    index = pd.DataFrame(
        {
            "row": rows,
            "subject_id": SUBJECTS,
            "centre_left": 30,
            "centre_right": 30,
            "qc_pass": True,
            "qc_reason": "",
        }
    )
    index.to_csv(pre / "index.csv", index=False)
    run = work / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"work": str(work), "run_id": "r1-test"}))
    pd.DataFrame(
        {"subject_id": SUBJECTS, "fold": FOLDS, "split": "test", "prob_right": PROBS, "label": LABELS}
    ).to_csv(run / "predictions.csv", index=False)
    for fold in (0, 1):
        bundle = run / f"fold_{fold:02d}" / "bundle"
        bundle.mkdir(parents=True)
        (bundle / "model.json").write_text(json.dumps({"factor": fold + 1.0, "architecture": "pooled-test"}))
    return run


def write_masks(folder: Path, offset: tuple[int, int] = (0, 0), code: int = 2) -> Path:
    """Cache-space label volumes with one lesion at the planted spot (shifted by ``offset``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for sid, label, k in zip(SUBJECTS, LABELS, SPOT_SLICE, strict=True):
        volume = np.zeros((23, 224, 224), dtype=np.uint8)
        r, c = SPOT[0] + offset[0], SPOT[1] + offset[1]
        volume[k, r : r + 8, c : c + 8] = code
        side = "right" if label == 1 else "left"
        np.savez_compressed(folder / f"{sid}_{side}.npz", mask=volume)
    return folder


def test_stage_writes_out_of_fold_maps_best_slices_and_overlays(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    summary = run_cam_stage(run, cache_masks=write_masks(tmp_path / "masks"), loader=load_test_bundle)
    cams = np.load(run / "cam" / "cams.npy")
    index = pd.read_csv(run / "cam" / "index.csv", dtype={"subject_id": str})
    assert cams.shape == (4, 2, 23, 28, 28) and cams.dtype == np.float32
    assert index["subject_id"].tolist() == SUBJECTS
    assert index["best_slice"].tolist() == SPOT_SLICE
    assert index["painful_side"].tolist() == ["right", "left", "right", "left"]
    assert index["correct"].tolist() == [True, True, False, True]
    # fold 1 subjects come from the bundle with factor 2: their planted cell is twice as hot
    hot = [cams[i, LABELS[i], SPOT_SLICE[i], SPOT[0] // 8, SPOT[1] // 8] for i in range(4)]
    assert hot == pytest.approx([1.0, 2.0, 1.0, 2.0])
    for sid in SUBJECTS:
        for side in ("left", "right"):
            image = cv2.imread(str(run / "cam" / "overlays" / f"{sid}_{side}.png"))
            assert image is not None and image.shape[0] > 200
            saturation = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1]
            assert saturation.max() > 200  # a coloured heat map is drawn, not only grey
    assert summary["pointing_hit_rate_correct"] == 1.0
    assert summary["pointing_hit_rate_correct_ours"] == 1.0
    assert summary["pointing_n_correct"] == 3
    # each subject's lesion is on another slice: no fixed (slice, cell) learned on the others can hit
    assert summary["pointing_hit_rate_correct_constant"] == 0.0
    assert 0 < summary["pointing_hit_rate_correct_chance"] < 0.01
    low, high = summary["pointing_hit_rate_correct_ours_ci95"]
    assert high == pytest.approx(1.0) and 0.4 < low < 0.5  # 3 of 3: Wilson keeps room below
    assert summary["ours_vs_constant_correct"] == {
        "subjects": 3, "ours_only": 3, "baseline_only": 0, "p_value": pytest.approx(0.25)
    }  # fmt: skip
    stored = json.loads((run / "cam" / "localization.json").read_text())
    assert stored["ours_vs_constant_correct"]["ours_only"] == 3
    assert 0 < summary["area_above_half_pct_mean"] < 5  # one hot cell of 784
    lesions = pd.read_csv(run / "cam" / "lesion_table.csv")
    bml = lesions.set_index("lesion").loc["bone_marrow_lesion"]
    assert (bml["n"], bml["correct"], bml["wrong"]) == (4, 3, 1)
    assert "| bone_marrow_lesion | 4 |" in (run / "cam" / "lesion_table.md").read_text()


def test_localization_misses_a_lesion_two_cells_away(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run_cam_stage(run, overlays=False, loader=load_test_bundle)
    outputs = read_cam_outputs(run)
    near = localize(outputs, folder_mask_source(write_masks(tmp_path / "near", offset=(8, 0))))
    far = localize(outputs, folder_mask_source(write_masks(tmp_path / "far", offset=(24, 0))))
    assert near["hit"].tolist() == [True] * 4
    assert far["hit"].tolist() == [False] * 4
    assert near["hit_ours"].tolist() == [True] * 4
    assert far["hit_ours"].tolist() == [False] * 4
    assert near["lesion_ours"].tolist() == ["bone_marrow_lesion"] * 4
    assert far["lesion"].tolist() == ["none"] * 4
    assert (far["energy_share_slice"] < near["energy_share_slice"]).all()


def test_subject_without_mask_is_excluded_with_reason(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run_cam_stage(run, overlays=False, loader=load_test_bundle)
    masks = write_masks(tmp_path / "masks")
    (masks / "9000002_left.npz").unlink()
    table = localize(read_cam_outputs(run), folder_mask_source(masks))
    row = table.set_index("subject_id").loc["9000002"]
    assert row["excluded"] == "no truth mask for the painful knee"
    assert np.isnan(row["hit"])


def test_prior_rule_takes_the_usual_place_among_near_equal_peaks_and_ignores_its_own_fold() -> None:
    # Folds 0 and 1: every subject's evidence at slice 6, cell (2, 2) of its painful (right) knee.
    # The fold-2 subject has a peak at slice 15, cell (5, 5), a little stronger than the one at
    # (6, 2, 2); its fold mate has a huge peak at (15, 5, 5), which must not feed its own prior,
    # and is missed by both rules.
    n = 6
    cams = np.zeros((n, 2, 23, 8, 8), dtype=np.float32)
    cams[:4, 1, 6, 2, 2] = 1.0
    cams[4, 1, 15, 5, 5], cams[4, 1, 6, 2, 2] = 1.0, 0.8
    cams[5, 1, 15, 5, 5], cams[5, 0, 6, 2, 2] = 10.0, 5.0  # and its other knee is the hot one at (6, 2, 2)
    index = pd.DataFrame(
        {
            "subject_id": [f"90000{i}" for i in range(n)],
            "fold": [0, 0, 1, 1, 2, 2],
            "painful_side": ["right"] * n,
            "correct": [True] * n,
            "best_slice": [6] * n,
        }
    )
    outputs = CamOutputs(Path("."), cams, index, {}, None)
    priors = evidence_priors(outputs)
    assert set(priors) == {0, 1, 2}
    assert np.unravel_index(int(np.argmax(priors[2])), priors[2].shape) == (6, 2, 2)
    assert priors[2][15, 5, 5] == 0  # the fold mate's peak stays out of fold 2's prior
    labels = np.zeros((23, 224, 224), dtype=np.uint8)
    labels[6, 2 * 28 : 3 * 28, 2 * 28 : 3 * 28] = 2
    table = localize(outputs, lambda subject, side: labels if side == "right" else None).set_index(
        "subject_id"
    )
    row = table.loc["900004"]
    assert row["best_slice_ours"] == 15 and not row["hit_ours"]
    assert row["best_slice_prior"] == 6 and row["hit_prior"]
    summary = summarize(table.reset_index(), "kneenet", [8, 8])
    assert summary["pointing_hit_rate_correct_prior"] == pytest.approx(5 / 6)
    assert summary["prior_vs_constant_correct"]["subjects"] == n
    one_fold = CamOutputs(Path("."), cams, index.assign(fold=0), {}, None)
    assert evidence_priors(one_fold) == {}
    assert localize(one_fold, lambda subject, side: labels)["hit_prior"].isna().all()


def test_paired_hits_count_discordant_subjects_and_test_them_exactly() -> None:
    ours = pd.Series([True] * 12 + [False] * 3 + [True] * 5 + [np.nan])
    baseline = pd.Series([False] * 12 + [True] * 3 + [True] * 5 + [True])
    paired = paired_hits(ours, baseline)
    assert (paired["subjects"], paired["ours_only"], paired["baseline_only"]) == (20, 12, 3)
    assert paired["p_value"] == pytest.approx(2 * sum(math.comb(15, k) for k in range(4)) / 2**15)
    assert paired_hits(ours[:0], baseline[:0])["p_value"] == 1.0
    assert hit_rate_interval(pd.Series([], dtype=float)) is None
    low, high = hit_rate_interval(pd.Series([True] * 80 + [False] * 20))
    assert low == pytest.approx(0.711, abs=1e-3) and high == pytest.approx(0.867, abs=1e-3)


def test_pointing_game_tolerance_is_one_cam_cell() -> None:
    cam = np.zeros((28, 28), dtype=np.float32)
    cam[10, 10] = 1.0  # hot spot near pixel (84, 84) after upsampling
    row, col = hot_spot(cam, (224, 224))
    assert 80 <= row <= 87 and 80 <= col <= 87  # inside CAM cell (10, 10)
    mask = np.zeros((224, 224), dtype=bool)
    mask[row + 8, col] = True  # one cell (8 px) below the hot spot
    assert pointing_hit(cam, mask)
    assert not pointing_hit(cam, mask, tolerance_cells=0)
    far = np.zeros_like(mask)
    far[row + 20, col] = True
    assert not pointing_hit(cam, far)
    labels = np.zeros((224, 224), dtype=np.uint8)
    labels[row + 8, col] = 4
    assert lesion_at_hot_spot(cam, labels) == 4


def test_area_and_energy_share_measure_what_they_say() -> None:
    half = np.zeros((28, 28), dtype=np.float32)
    half[:, :14] = 1.0
    assert area_above_half(half) == pytest.approx(0.5, abs=0.02)
    assert area_above_half(half * 7 - 3) == pytest.approx(area_above_half(half))  # min-max invariant
    flat = np.ones((28, 28), dtype=np.float32)
    quarter = np.zeros((224, 224), dtype=bool)
    quarter[:112, :112] = True
    assert energy_share(flat, quarter) == pytest.approx(0.25)
    assert np.isnan(energy_share(-flat, quarter))


def test_missing_bundle_is_named_and_previous_cams_survive(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    run_cam_stage(run, overlays=False, loader=load_test_bundle)
    before = (run / "cam" / "cams.npy").read_bytes()
    (run / "fold_01" / "bundle" / "model.json").unlink()
    with pytest.raises(CamInputError, match="fold_01"):
        run_cam_stage(run, overlays=False, loader=load_test_bundle)
    assert (run / "cam" / "cams.npy").read_bytes() == before


def test_subject_missing_from_cache_is_named(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    predictions.loc[0, "subject_id"] = "9999999"
    predictions.to_csv(run / "predictions.csv", index=False)
    with pytest.raises(CamInputError, match="9999999"):
        read_run(run)


def test_cli_reports_a_run_without_predictions(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "predictions.csv").unlink()
    result = CliRunner().invoke(app, ["cam", str(run)])
    assert result.exit_code == 2
    assert "predictions.csv: predictions table not found" in result.output.replace("\n", "")


def test_truth_without_a_mask_mapping_is_recorded_and_area_still_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kneepain.preprocess

    monkeypatch.delattr(kneepain.preprocess, "mask_to_cache", raising=False)
    run = make_run(tmp_path)
    (tmp_path / "truth" / "masks").mkdir(parents=True)
    summary = run_cam_stage(run, truth=tmp_path / "truth", overlays=False, loader=load_test_bundle)
    stored = json.loads((run / "cam" / "localization.json").read_text())
    assert "mask_to_cache" in stored["localization_skipped"]
    assert stored["pointing_hit_rate_correct"] is None and stored["measured"] == 0
    assert summary["area_above_half_pct_mean"] > 0
    assert not (run / "cam" / "lesion_table.csv").exists()


def test_bundle_asking_for_a_smaller_input_gets_resized_slices(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for fold in (0, 1):
        meta_path = run / f"fold_{fold:02d}" / "bundle" / "model.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "input_size": 112}))
    summary = run_cam_stage(run, cache_masks=write_masks(tmp_path / "masks"), loader=load_test_bundle)
    cams = np.load(run / "cam" / "cams.npy")
    assert cams.shape == (4, 2, 23, 14, 14)
    assert pd.read_csv(run / "cam" / "index.csv")["best_slice"].tolist() == SPOT_SLICE
    assert summary["map_size"] == [14, 14]
    assert summary["pointing_hit_rate_correct"] == 1.0


def test_difference_map_finds_the_lesion_that_shared_anatomy_hides() -> None:
    # Both knees light up on the same anatomy at slice 22 (stronger than anything else); only the
    # painful (right) knee has extra evidence at slice 9, where its lesion is.
    cams = np.zeros((1, 2, 23, 28, 28), dtype=np.float32)
    cams[0, :, 22, 2, 2] = 5.0
    cams[0, :, 22] += 0.5
    cams[0, 1, 9, 14, 20] = 3.0
    labels = np.zeros((23, 224, 224), dtype=np.uint8)
    labels[9, 14 * 8 : 15 * 8, 20 * 8 : 21 * 8] = 2
    paper_slice = int(np.argmax(cams[0, 1].mean(axis=(1, 2))))
    index = pd.DataFrame(
        {"subject_id": ["9000001"], "painful_side": ["right"], "correct": [True], "best_slice": [paper_slice]}
    )
    outputs = CamOutputs(Path("."), cams, index, {}, None)
    table = localize(outputs, lambda subject, side: labels if side == "right" else None)
    row = table.iloc[0]
    assert row["best_slice"] == 22 and not row["hit"]
    assert row["best_slice_difference"] == 9 and row["hit_difference"]
    assert row["lesion_difference"] == "bone_marrow_lesion"
    summary = summarize(table, "kneenet", [28, 28])
    assert summary["pointing_hit_rate_correct"] == 0.0
    assert summary["pointing_hit_rate_correct_difference"] == 1.0


def test_ours_takes_the_focal_peak_not_the_warm_slice() -> None:
    # The painful (left) knee's difference map is warm all over slice 20 (highest mean) but its
    # strongest single cell is at slice 6, over the lesion; the other knee is flat.
    cams = np.zeros((1, 2, 23, 8, 8), dtype=np.float32)
    cams[0, 0, 20] = 1.0
    cams[0, 0, 6, 5, 2] = 4.0
    labels = np.zeros((23, 224, 224), dtype=np.uint8)
    labels[6, 5 * 28 : 6 * 28, 2 * 28 : 3 * 28] = 3
    index = pd.DataFrame(
        {"subject_id": ["9000001"], "painful_side": ["left"], "correct": [True], "best_slice": [20]}
    )
    table = localize(CamOutputs(Path("."), cams, index, {}, None), lambda s, side: labels)
    row = table.iloc[0]
    assert row["best_slice_difference"] == 20 and not row["hit_difference"]
    assert row["best_slice_ours"] == 6 and row["hit_ours"]
    assert row["lesion_ours"] == "hoffa_synovitis"
    centre = cells_to_pixels((5, 2), (8, 8), (224, 224))
    assert (row["hot_spot_row_ours"], row["hot_spot_col_ours"]) == pytest.approx(centre, abs=0.1)


def test_ours_prefers_evidence_that_persists_across_neighbouring_slices() -> None:
    # A lesion on slices 9-11 gives the painful knee moderate evidence on all three; a single
    # slice (15) elsewhere has a higher one-slice spike. Averaged with its neighbours, the lesion wins.
    cams = np.zeros((1, 2, 23, 8, 8), dtype=np.float32)
    cams[0, 1, 9:12, 2, 2] = 1.0
    cams[0, 1, 15, 6, 6] = 1.5
    labels = np.zeros((23, 224, 224), dtype=np.uint8)
    labels[9:12, 2 * 28 : 3 * 28, 2 * 28 : 3 * 28] = 2
    index = pd.DataFrame(
        {"subject_id": ["9000001"], "painful_side": ["right"], "correct": [True], "best_slice": [15]}
    )
    row = localize(CamOutputs(Path("."), cams, index, {}, None), lambda s, side: labels).iloc[0]
    assert row["best_slice_ours"] == 10 and row["hit_ours"]
    assert row["lesion_ours"] == "bone_marrow_lesion"
    assert int(np.argmax(cams[0, 1].max(axis=(1, 2)))) == 15  # the unsmoothed global maximum


def test_sub_cell_peak_leans_toward_the_stronger_neighbour() -> None:
    maps = np.zeros((3, 8, 8), dtype=np.float32)
    maps[1, 3, 3], maps[1, 3, 4] = 1.0, 0.9  # the evidence peak lies between cells 3 and 4
    k, row, col = peak_location(maps)
    assert (k, row) == (1, pytest.approx(3.0))
    assert col == pytest.approx((3 * 1.0 + 4 * 0.9) / 1.9)
    spot = cells_to_pixels((row, col), (8, 8), (224, 224))
    cell_centre = cells_to_pixels((3, 3), (8, 8), (224, 224))
    lesion = np.zeros((224, 224), dtype=bool)
    lesion[int(spot[0]), int(cell_centre[1] + 28) + 2] = True  # just past one cell from the cell centre
    assert hit_at(lesion, spot, (28.0, 28.0))
    assert not pointing_hit(maps[1], lesion)  # the upsampled maximum stays at the cell centre


def test_tolerance_is_one_exact_cell_when_the_map_does_not_divide_the_slice() -> None:
    cell = (224 / 12, 224 / 12)  # 18.67 pixels
    spot = (100.0, 100.0)
    inside, outside = np.zeros((224, 224), bool), np.zeros((224, 224), bool)
    inside[100, 100 + int(cell[1])] = True  # 18 pixels away
    outside[100, 100 + int(cell[1]) + 1] = True  # 19 pixels: more than one cell
    assert hit_at(inside, spot, cell) and not hit_at(outside, spot, cell)
    assert not hit_at(inside, spot, cell, tolerance_cells=0)


def test_baselines_a_constant_point_and_chance() -> None:
    shared = np.zeros((23, 224, 224), dtype=np.uint8)
    shared[11, 100:110, 100:110] = 1  # the same anatomy in three knees
    elsewhere = np.zeros_like(shared)
    elsewhere[3, 10:20, 200:210] = 2
    grids = [reachable_cells(v, (8, 8)) for v in (shared, shared, shared, elsewhere)]
    assert constant_point_hits(grids).tolist() == [1.0, 1.0, 1.0, 0.0]
    # two knees, two places: leaving either out makes the other's place the only choice
    assert constant_point_hits(grids[2:]).tolist() == [0.0, 0.0]
    single = np.zeros((2, 224, 224), dtype=np.uint8)
    single[0, 112, 112] = 5
    window = (2 * 28 + 1) ** 2  # pixels within one 28-pixel cell of the lesion pixel
    assert chance_hit_rate(single, (8, 8)) == pytest.approx(window / (224 * 224) / 2)


def test_tolerance_zero_between_pixels_is_the_pixel_under_the_spot() -> None:
    lesion = np.zeros((224, 224), bool)
    lesion[98, 40] = True
    assert hit_at(lesion, (97.6, 40.4), (28.0, 28.0), tolerance_cells=0)
    assert not hit_at(lesion, (97.4, 40.4), (28.0, 28.0), tolerance_cells=0)
