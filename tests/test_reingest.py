"""Re-ingest after changing one participant's files: preprocess recomputes exactly that participant.

A small synthetic cohort is ingested and preprocessed with one right-knee file cut short (the
participant is flagged ``unreadable_series``). The file is mended and the cohort re-ingested:
preprocess recomputes that participant alone and QC passes. Then the tree is copied to another
root (times kept, as ``cp -a`` does) with one participant's series replaced by another knee's
files: preprocess recomputes that participant alone, and qc.csv names the new root's folders.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from kneepain.ingest.pipeline import run_ingest
from kneepain.preprocess import run_preprocess

SUBJECTS = 4


def series_table(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "ingest" / "series.csv", dtype=str, keep_default_na=False)


def qc_table(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "preprocess" / "qc.csv", dtype={"subject_id": str}, keep_default_na=False)


def part_bytes(work: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((work / "preprocess" / "parts").glob("*.npz"))}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kneepain.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("reingest")
    generate_cohort(root / "cohort", SUBJECTS, seed=5, workers=1)
    return root


def test_mended_file_and_replaced_series_recompute_exactly_that_participant(
    cohort: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, clinical, work = cohort / "cohort" / "images", cohort / "cohort" / "clinical", cohort / "work"
    run_ingest(images, clinical, work, workers=1)
    series = series_table(work)
    broken_id = series["subject_id"].iloc[0]
    folder = Path(
        series.loc[(series["subject_id"] == broken_id) & (series["side"] == "right"), "path"].iloc[0]
    )
    damaged = sorted(folder.iterdir())[10]
    good_bytes = damaged.read_bytes()
    damaged.write_bytes(good_bytes[:-4000])
    run_ingest(images, clinical, work, workers=1)
    first = run_preprocess(work, workers=1)
    qc = qc_table(work).set_index(["subject_id", "side"])
    assert "unreadable_series" in qc.loc[(broken_id, "right"), "qc_reason"]
    before = part_bytes(work)

    damaged.write_bytes(good_bytes)  # the download fixed
    run_ingest(images, clinical, work, workers=1)
    capsys.readouterr()
    mended = run_preprocess(work, workers=1)
    err = capsys.readouterr().err
    assert "preprocess: recomputed 1: inputs changed" in err
    assert "template.npy was built from series files that changed since; it is kept" in err
    assert (mended["processed"], mended["recomputed"]) == (1, 1)
    assert mended["skipped"] == first["subjects"] - 1
    after = part_bytes(work)
    assert [s for s in after if after[s] != before[s]] == [broken_id]
    qc = qc_table(work).set_index(["subject_id", "side"])
    assert "unreadable_series" not in qc.loc[(broken_id, "right"), "qc_reason"]

    # The same files under another root (times kept), with one series replaced by another knee's.
    moved = cohort / "moved" / "images"
    shutil.copytree(images, moved)
    series = series_table(work)
    replaced_id, donor_id = series["subject_id"].iloc[2], series["subject_id"].iloc[4]
    target = Path(
        series.loc[(series["subject_id"] == replaced_id) & (series["side"] == "left"), "path"].iloc[0]
    )
    donor = Path(series.loc[(series["subject_id"] == donor_id) & (series["side"] == "left"), "path"].iloc[0])
    target = moved / target.relative_to(images)
    shutil.rmtree(target)
    target.mkdir()
    for file in sorted(donor.iterdir()):
        shutil.copy(file, target / file.name)  # new modification times: another series
    run_ingest(moved, clinical, work, workers=1)
    again = run_preprocess(work, workers=1)
    assert (again["processed"], again["recomputed"]) == (1, 1)
    changed = part_bytes(work)
    assert [s for s in changed if changed[s] != after[s]] == [replaced_id]
    paths = qc_table(work)["series_path"]
    assert paths.str.startswith(str(moved.resolve())).all(), paths.tolist()

    unchanged = run_preprocess(work, workers=1)
    assert (unchanged["processed"], unchanged["recomputed"]) == (0, 0)
    assert part_bytes(work) == changed
