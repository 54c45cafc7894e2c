"""The preprocess stage end to end on a small synthetic cohort: figures against truth, resume,
shards, configuration check, manual overrides, bad series, CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.contracts import CACHE_INDEX_COLUMNS, open_cache, read_cache_index, training_table
from kneepain.preprocess import CacheMismatchError, check_cache, run_preprocess
from kneepain.preprocess.measure import measure_against_truth

SUBJECTS = 8
ARTIFACT_RATE = 0.4  # raised from the generator's 2% so QC meets every kind of artifact


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic cohort (artifact-rich) ingested into a work folder; one knee cut short, one blanked."""
    from kneepain.ingest.pipeline import run_ingest
    from kneepain.synth import population
    from kneepain.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("preprocess")
    stress = replace(population.PROPORTIONS["training"], artifact_per_knee=ARTIFACT_RATE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(population.PROPORTIONS, "qc_test", stress)
        generate_cohort(root / "cohort", SUBJECTS, seed=7, workers=1, proportions="qc_test")
    work = root / "work"
    run_ingest(root / "cohort" / "images", root / "cohort" / "clinical", work, workers=1)
    return root / "cohort", work


def both_series(work: Path) -> pd.DataFrame:
    cohort = pd.read_csv(work / "ingest" / "cohort.csv", dtype={"subject_id": str})
    return cohort[cohort["has_left_series"].astype(bool) & cohort["has_right_series"].astype(bool)]


@pytest.fixture(scope="module")
def processed(cohort: tuple[Path, Path]) -> tuple[Path, Path, dict]:
    truth, work = cohort
    summary = run_preprocess(work, workers=2)
    return truth, work, summary


def test_cache_follows_the_contract(processed: tuple[Path, Path, dict]) -> None:
    _, work, summary = processed
    cache = open_cache(work / "preprocess" / "cache.npy")
    index = read_cache_index(work / "preprocess" / "index.csv")
    expected_ids = sorted(both_series(work)["subject_id"])
    assert index["subject_id"].tolist() == expected_ids
    assert list(index.columns[: len(CACHE_INDEX_COLUMNS)]) == CACHE_INDEX_COLUMNS
    assert cache.shape == (len(expected_ids), 2, 23, 224, 224)
    passed = index[index["qc_pass"]]
    assert len(passed) and all(cache[r].max() > 200 for r in passed["row"])  # scaled to the full range
    failed = index[~index["qc_pass"]]
    assert all(reason for reason in failed["qc_reason"])  # nobody excluded without a reason
    assert summary["processed"] == len(expected_ids)
    assert set(training_table(work, "A")["subject_id"]) <= set(passed["subject_id"])
    assert check_cache(work).register


def test_figures_against_truth(processed: tuple[Path, Path, dict]) -> None:
    truth, work, _ = processed
    figures = measure_against_truth(work, truth / "truth")
    assert figures["clean_knees"] >= 4 and figures["qc_artifact_knees"] >= 3
    assert figures["centre_within_1"] >= 0.95
    assert figures["aligned_median_mm"] <= 0.5 and figures["aligned_median_deg"] <= 0.5
    assert figures["aligned_within_2mm"] >= 0.98
    # The template is moved to an anatomical frame (level tibial plateau, centre above the tibial
    # eminence), so the raw rotation and the anteroposterior (col) offset match the generator's
    # anatomical frame (here -0.04 deg and 0.07 mm). Its height stays the template knees' mean
    # pose, 2.5 mm off for these 16 knees (sampling error), so the raw median in mm is not
    # asserted here (docs/preprocess.md reports it on two 200-subject cohorts).
    assert figures["template_frame"]["status"] == "found"
    offset = figures["global_offset_deg_row_col"]
    assert abs(offset[0]) < 0.3 and abs(offset[2]) < 0.5
    assert figures["raw_median_deg"] <= 0.5
    sample_mean = figures["template_knees_true_mean_deg_row_col"]
    assert abs(offset[1] + sample_mean[1]) < 1.0  # the height: minus the knees' mean, as before
    assert figures["qc_sensitivity"] >= 0.9 and figures["qc_specificity"] >= 0.95


def test_one_pair_reproduces_its_cache_row(processed: tuple[Path, Path, dict]) -> None:
    """predict's entry: preprocess_pair with the cache's config and templates gives the same pixels."""
    from kneepain.preprocess import load_templates, preprocess_pair

    _, work, _ = processed
    config, templates = load_templates(work)
    index = read_cache_index(work / "preprocess" / "index.csv")
    series = pd.read_csv(work / "ingest" / "series.csv", dtype={"subject_id": str}).set_index(
        ["subject_id", "side"]
    )
    row = index.iloc[0]
    left, right = (series.loc[(row["subject_id"], side), "path"] for side in ("left", "right"))
    pixels, info = preprocess_pair(left, right, config, templates=templates)
    assert np.array_equal(pixels, open_cache(work / "preprocess" / "cache.npy")[int(row["row"])])
    assert info["left"]["centre_slice"] == row["centre_left"] and len(info["right"]["registration"]) == 23


def test_slice_index_points_lateral_in_both_knees(processed: tuple[Path, Path, dict]) -> None:
    """Left and right knee series run in opposite directions; after preprocessing slice k of the
    left knee must resemble slice k of the right knee more than the mirrored slice 22 - k."""
    _, work, _ = processed
    cache = open_cache(work / "preprocess" / "cache.npy")
    index = read_cache_index(work / "preprocess" / "index.csv")
    same, mirrored = [], []
    for row in index[index["qc_pass"]]["row"]:
        left, right = cache[row, 0].astype(np.float32), cache[row, 1].astype(np.float32)
        for k in (1, 3, 19, 21):
            same.append(np.corrcoef(left[k].ravel(), right[k].ravel())[0, 1])
            mirrored.append(np.corrcoef(left[k].ravel(), right[22 - k].ravel())[0, 1])
    assert same and np.mean(same) > np.mean(mirrored) + 0.05


def test_rerun_skips_finished_and_other_configuration_is_refused(processed: tuple[Path, Path, dict]) -> None:
    _, work, _ = processed
    before = (work / "preprocess" / "cache.npy").read_bytes()
    summary = run_preprocess(work, workers=1)
    assert summary["processed"] == 0 and summary["skipped"] == summary["subjects"]
    assert (work / "preprocess" / "cache.npy").read_bytes() == before
    with pytest.raises(CacheMismatchError, match="register"):
        run_preprocess(work, register=False)
    assert (work / "preprocess" / "cache.npy").read_bytes() == before  # refused, nothing overwritten


def test_shards_share_one_stored_template_and_merge_to_the_same_cache(
    processed: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    _, work, _ = processed
    shutil.copytree(work / "ingest", tmp_path / "ingest")
    runner = CliRunner()
    built = runner.invoke(app, ["preprocess", str(tmp_path), "--template-only", "--workers", "1"])
    assert built.exit_code == 0, built.output
    template = tmp_path / "preprocess" / "template.npy"
    # Same cohort, another worker count: the same template, byte for byte.
    assert template.read_bytes() == (work / "preprocess" / "template.npy").read_bytes()
    record = json.loads((tmp_path / "preprocess" / "template.json").read_text())
    assert (
        record["source"] == "built" and record["rounds"] and not (tmp_path / "preprocess" / "parts").exists()
    )
    stamp = template.stat().st_mtime_ns
    processed = 0
    for i in range(2):
        summary = run_preprocess(tmp_path, workers=1, shard=(i, 2))
        assert not (tmp_path / "preprocess" / "cache.npy").exists()  # shards do not merge
        assert summary["template_cpu_seconds"] < 1.0  # read, not rebuilt
        processed += summary["processed"]
    assert template.stat().st_mtime_ns == stamp
    assert processed == len(both_series(work))
    result = runner.invoke(app, ["preprocess", str(tmp_path), "--merge-only"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "preprocess" / "cache.npy").read_bytes() == (
        work / "preprocess" / "cache.npy"
    ).read_bytes()
    bad = runner.invoke(app, ["preprocess", str(tmp_path), "--shard", "3/2"])
    assert bad.exit_code != 0 and "0 <= i < n" in bad.output


def test_template_from_another_work_folder(processed: tuple[Path, Path, dict], tmp_path: Path) -> None:
    """--template reuses a stored template: the cache rows come out as in the folder it came from;
    a template of the wrong shape, or another template than the parts', is refused by name."""
    _, work, _ = processed
    given = work / "preprocess" / "template.npy"
    other = tmp_path / "other"
    shutil.copytree(work / "ingest", other / "ingest")
    summary = run_preprocess(other, workers=1, shard=(0, 4), template=given)
    assert summary["processed"] >= 1
    index = read_cache_index(work / "preprocess" / "index.csv").set_index("subject_id")
    cache = open_cache(work / "preprocess" / "cache.npy")
    for part in sorted((other / "preprocess" / "parts").glob("*.npz")):
        with np.load(part) as data:
            assert np.array_equal(data["pixels"], cache[int(index.loc[part.stem, "row"])])
    record = json.loads((other / "preprocess" / "template.json").read_text())
    assert record["source"] == str(given.resolve())

    changed = tmp_path / "changed.npy"
    np.save(changed, np.load(given) * 0.5)
    with pytest.raises(CacheMismatchError, match=r"changed\.npy: not the template the parts"):
        run_preprocess(other, workers=1, shard=(0, 4), template=changed)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 80, 80), np.float32))
    fresh = tmp_path / "fresh"
    shutil.copytree(work / "ingest", fresh / "ingest")
    result = CliRunner().invoke(app, ["preprocess", str(fresh), "--template", str(wrong)])
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code != 0 and "wrong.npy: template shape (5, 80, 80) does not fit" in output
    assert not (fresh / "preprocess" / "template.npy").exists()


def test_manual_lists_override_detection_and_flags(
    processed: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    _, work, _ = processed
    shutil.copytree(work / "ingest", tmp_path / "ingest")
    shutil.copytree(work / "preprocess", tmp_path / "preprocess")
    index = read_cache_index(tmp_path / "preprocess" / "index.csv")
    first = index.iloc[0]
    centres = tmp_path / "centres.csv"
    manual_centre = int(first["centre_left"]) + 1
    centres.write_text(f"subject_id,side,centre_slice\n{first['subject_id']},left,{manual_centre}\n")
    overrides = tmp_path / "qc.csv"
    overrides.write_text(
        f"subject_id,side,qc_pass,note\n{first['subject_id']},both,false,reader saw motion\n"
    )
    summary = run_preprocess(tmp_path, workers=1, centre_csv=centres, qc_override_csv=overrides)
    assert summary["processed"] == 1  # only the subject whose centre changed is redone
    after = read_cache_index(tmp_path / "preprocess" / "index.csv")
    assert int(after.iloc[0]["centre_left"]) == manual_centre
    assert not after.iloc[0]["qc_pass"] and "manual fail: reader saw motion" in after.iloc[0]["qc_reason"]
    qc = pd.read_csv(tmp_path / "preprocess" / "qc.csv", dtype={"subject_id": str})
    row = qc[(qc["subject_id"] == first["subject_id"]) & (qc["side"] == "left")].iloc[0]
    assert row["centre_method"] == "manual" and row["manual"] == "fail"


def test_short_and_blank_series_are_flagged_and_the_run_goes_on(
    cohort: tuple[Path, Path], tmp_path: Path
) -> None:
    _, work = cohort
    shutil.copytree(work / "ingest", tmp_path / "ingest")
    series = pd.read_csv(tmp_path / "ingest" / "series.csv", dtype={"subject_id": str})
    ids = sorted(both_series(work)["subject_id"])
    short_id, blank_id = ids[0], ids[1]
    for subject_id, side, action in ((short_id, "left", "short"), (blank_id, "right", "blank")):
        row = series[(series["subject_id"] == subject_id) & (series["side"] == side)].index[0]
        copy = tmp_path / "series" / f"{subject_id}_{side}"
        shutil.copytree(series.loc[row, "path"], copy)
        files = sorted(copy.iterdir())
        if action == "short":
            for file in files[:18]:  # 37 slices -> 19: not 11 on both sides of any centre
                file.unlink()
        else:
            for file in files:
                ds = pydicom.dcmread(file)
                ds.PixelData = np.zeros((ds.Rows, ds.Columns), np.uint16).tobytes()
                ds.save_as(file)
        series.loc[row, "path"] = str(copy)
    series.to_csv(tmp_path / "ingest" / "series.csv", index=False)
    run_preprocess(tmp_path, workers=1, register=False)
    index = read_cache_index(tmp_path / "preprocess" / "index.csv").set_index("subject_id")
    assert index["qc_pass"].size == len(ids)  # every subject still has a row
    assert not index.loc[short_id, "qc_pass"] and "too_few_slices" in index.loc[short_id, "qc_reason"]
    assert not index.loc[blank_id, "qc_pass"] and "blank_slices" in index.loc[blank_id, "qc_reason"]
    cache = open_cache(tmp_path / "preprocess" / "cache.npy")
    assert cache[int(index.loc[blank_id, "row"]), 1].max() == 0


def test_truth_masks_map_into_cache_space(processed: tuple[Path, Path, dict]) -> None:
    """A lesion mask taken through the cache's transforms lands where the lesion's signal is."""
    from kneepain.preprocess import mask_to_cache

    truth, work, _ = processed
    knees = pd.read_csv(truth / "truth" / "knees.csv", dtype={"subject_id": str})
    index = read_cache_index(work / "preprocess" / "index.csv")
    knees = knees[knees["subject_id"].isin(index["subject_id"]) & (knees["lesion_burden"] > 0)]
    row = knees.iloc[0]
    labels = mask_to_cache(truth / "truth", work, row["subject_id"], row["side"])
    assert labels is not None and labels.shape == (23, 224, 224) and labels.max() > 0
    assert mask_to_cache(truth / "truth", work, "0000000", "left") is None


def test_truth_masks_without_the_cohort_images_name_the_missing_series(
    processed: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """Images deleted after preprocessing: a clear error naming the series, not a bare traceback."""
    from kneepain.cam.compute import CamInputError
    from kneepain.cam.localization import truth_mask_source

    truth, work, _ = processed
    moved = tmp_path / "work"
    shutil.copytree(work / "ingest", moved / "ingest")
    shutil.copytree(
        work / "preprocess", moved / "preprocess", ignore=shutil.ignore_patterns("*.npy", "parts")
    )
    series = pd.read_csv(moved / "ingest" / "series.csv", dtype={"subject_id": str})
    series["path"] = [str(tmp_path / "gone" / str(i)) for i in range(len(series))]
    series.to_csv(moved / "ingest" / "series.csv", index=False)
    knees = pd.read_csv(truth / "truth" / "knees.csv", dtype={"subject_id": str})
    index = read_cache_index(work / "preprocess" / "index.csv")
    row = knees[knees["subject_id"].isin(index["subject_id"]) & (knees["lesion_burden"] > 0)].iloc[0]
    with pytest.raises(
        CamInputError, match=f"subject {row['subject_id']} {row['side']}.*gone.*keep the cohort's images"
    ):
        truth_mask_source(truth / "truth", moved)(row["subject_id"], row["side"])


def test_qc_audit_flags_a_manual_list_that_removes_painful_knees(
    processed: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """Failing the painful knee of every labelled subject by hand is an exclusion that depends on
    pain: preprocess writes qc_audit.csv and counts it; the automatic run before had its audit too."""
    _, work, summary = processed
    assert (work / "preprocess" / "qc_audit.csv").is_file() and "qc_label_dependent" in summary
    shutil.copytree(work / "ingest", tmp_path / "ingest")
    shutil.copytree(work / "preprocess", tmp_path / "preprocess")
    people = both_series(tmp_path)
    people = people[people["label"].notna()]
    assert len(people) >= 5
    painful = ["right" if int(label) == 1 else "left" for label in people["label"]]
    overrides = tmp_path / "qc_overrides.csv"
    lines = [f"{s},{side},false,planted" for s, side in zip(people["subject_id"], painful, strict=True)]
    overrides.write_text("subject_id,side,qc_pass,note\n" + "\n".join(lines) + "\n")
    summary = run_preprocess(tmp_path, workers=1, qc_override_csv=overrides)
    assert summary["processed"] == 0 and summary["qc_label_dependent"] >= 1
    audit = pd.read_csv(tmp_path / "preprocess" / "qc_audit.csv")
    final = audit[(audit["rule"] == "final decision") & (audit["comparison"] == "painful vs other knee")]
    assert bool(final.iloc[0]["label_dependent"]) and final.iloc[0]["excluded_a"] == len(people)


def test_a_template_of_configuration_7_is_refused_not_reused(
    processed: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    """Configurations 3-7 stored anatomical templates resampled into their frame; reusing one now
    would start every registration the mean tibial slope away again, so it is refused by name."""
    _, work, _ = processed
    shutil.copytree(work / "ingest", tmp_path / "ingest")
    (tmp_path / "preprocess").mkdir()
    shutil.copy(work / "preprocess" / "template.npy", tmp_path / "preprocess" / "template.npy")
    record = json.loads((work / "preprocess" / "template.json").read_text())
    assert record["resampled_into_frame"] is False and record["template_frame"] == "anatomical"
    del record["resampled_into_frame"]  # as a configuration-7 record reads
    (tmp_path / "preprocess" / "template.json").write_text(json.dumps(record))
    with pytest.raises(CacheMismatchError, match=r"differs in \['resampled_into_frame'\]"):
        run_preprocess(tmp_path, workers=1)
    assert not (tmp_path / "preprocess" / "cache.npy").exists()
