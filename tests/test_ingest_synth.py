"""End to end on a synthetic cohort: ingest agrees with ``truth/subjects.csv``, also on a re-laid tree.

Truth describes the people; ingest sees only what the files show. Where the two legitimately
differ the test says why: a missing pain or KL cell hides the true value from ingest, and image
artifacts other than missing slices are found later by preprocess QC, not by ingest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.contracts import FUNNEL_TABLE, WorkPaths, read_cohort
from kneepain.ingest.cohort import funnel

# 16 people with the paper's proportions; seed 393 gives no-pain, bilateral and unilateral people, a
# missing series, a missing pain cell and a missing KL cell (checked below, so a synth change shows).
SUBJECTS, SEED = 16, 393
TRUTH_REASON = {"no knee pain": "no frequent pain", "pain in both knees": "bilateral frequent pain"}


def _ingest(images: Path, clinical: Path, work: Path) -> None:
    args = [
        "ingest",
        "--images",
        str(images),
        "--clinical",
        str(clinical),
        "--out",
        str(work),
        "--workers",
        "2",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def _relay(source: Path, target: Path, *, skip_csv: bool) -> None:
    """Copy a tree (hard links, so no extra disk) with every name lower-cased, as some releases are."""
    for folder, _subdirs, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        destination = target / Path(*[p.lower() for p in relative.parts]) if relative.parts else target
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            if skip_csv and name.lower().endswith(".csv"):
                continue
            os.link(Path(folder) / name, destination / name.lower())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One synthetic cohort, ingested as written and re-laid (nested, no index CSV, lower-case names)."""
    from kneepain.synth import generate_cohort

    root = tmp_path_factory.mktemp("synth")
    cohort = root / "cohort"
    generate_cohort(cohort, SUBJECTS, SEED, workers=2, proportions="paper")
    _ingest(cohort / "images", cohort / "clinical", root / "work")
    relaid = root / "relaid"
    _relay(
        cohort / "images" / "00m", relaid / "images" / "OAI_Baseline_Package" / "00m" / "00m", skip_csv=True
    )
    _relay(cohort / "clinical", relaid / "clinical" / "Clinical Data", skip_csv=False)
    _ingest(relaid / "images", relaid / "clinical", root / "relaid_work")
    return {"cohort": cohort, "work": root / "work", "relaid_work": root / "relaid_work", "relaid": relaid}


@pytest.fixture(scope="module")
def joined(synthetic: dict[str, Path]) -> pd.DataFrame:
    truth = pd.read_csv(synthetic["cohort"] / "truth" / "subjects.csv", dtype={"subject_id": str})
    truth["expected_exclusion"] = truth["expected_exclusion"].fillna("")
    cohort = read_cohort(WorkPaths(synthetic["work"]).cohort_table).fillna({"exclusion": ""})
    assert sorted(cohort["subject_id"]) == sorted(truth["subject_id"])
    return truth.merge(cohort, on="subject_id", suffixes=("_truth", ""))


def _hidden_pain(frame: pd.DataFrame) -> pd.Series:
    return frame["expected_exclusion"].str.startswith("missing pain value")


def _qc_only(frame: pd.DataFrame) -> pd.Series:
    """Artifacts that only image QC (preprocess) can see; missing slices ingest finds itself."""
    quality = frame["expected_exclusion"].str.startswith("image quality")
    return quality & ~frame["expected_exclusion"].str.contains("missing_slices")


def test_cohort_has_the_cases_the_test_relies_on(joined: pd.DataFrame) -> None:
    reasons = set(joined["expected_exclusion"])
    assert {"no knee pain", "pain in both knees"} <= reasons
    assert _hidden_pain(joined).any()
    assert (joined["has_left_series_truth"].eq(0) | joined["has_right_series_truth"].eq(0)).any()
    assert joined["kl_left"].isna().any() or joined["kl_right"].isna().any()


def test_labels_agree_with_truth(joined: pd.DataFrame) -> None:
    visible = joined[~_hidden_pain(joined)]
    assert (
        visible["label"].astype("Float64").fillna(-1).tolist()
        == visible["label_truth"].astype("Float64").fillna(-1).tolist()
    )
    hidden = joined[_hidden_pain(joined)]
    assert hidden["label"].isna().all()
    assert hidden["exclusion"].str.startswith("missing pain variable").all()


def test_model_a_and_b_membership_agree_with_truth(joined: pd.DataFrame) -> None:
    comparable = joined[~_qc_only(joined)]
    assert comparable["model_a"].astype(bool).tolist() == comparable["model_a_truth"].astype(bool).tolist()
    assert comparable["model_b"].astype(bool).tolist() == comparable["model_b_truth"].astype(bool).tolist()
    # Exclusion reasons say the same thing in ingest's words.
    for row in comparable.itertuples():
        expected = TRUTH_REASON.get(row.expected_exclusion, row.expected_exclusion)
        if expected.startswith("missing pain value"):
            expected = "missing pain variable"
        if expected.startswith("image quality: missing_slices"):
            expected = "bad series"
        assert row.exclusion.startswith(expected), (row.subject_id, row.exclusion, expected)


def test_kl_grades_and_covariates_agree_with_truth(joined: pd.DataFrame, synthetic: dict[str, Path]) -> None:
    kl_text = next((synthetic["cohort"] / "clinical").rglob("kxr_sq_bu00.txt")).read_text()
    for side, code in (("right", "1: Right"), ("left", "2: Left")):
        known = joined[f"kl_{side}"].notna()
        assert (joined.loc[known, f"kl_{side}"] == joined.loc[known, f"kl_{side}_truth"]).all()
        for subject in joined.loc[~known, "subject_id"]:  # missing only where the file has a missing code
            assert f"{subject}|{code}|15|." in kl_text
    assert (joined["sex"] == joined["sex_truth"]).all()
    assert (joined["age"] == joined["age_truth"]).all()
    np.testing.assert_allclose(joined["bmi"], joined["bmi_truth"], atol=0.06)
    unhidden = ~_hidden_pain(joined)
    np.testing.assert_array_equal(
        joined.loc[unhidden, "womac_right"], joined.loc[unhidden, "womac_right_truth"]
    )


def test_funnel_agrees_with_truth(joined: pd.DataFrame, synthetic: dict[str, Path]) -> None:
    written = pd.read_csv(WorkPaths(synthetic["work"]).ingest / FUNNEL_TABLE)
    unilateral = joined["label_truth"].notna() & ~_hidden_pain(joined)
    both = unilateral & joined["has_left_series_truth"].eq(1) & joined["has_right_series_truth"].eq(1)
    readable = both & ~joined["expected_exclusion"].str.contains("missing_slices")
    expected = [
        len(joined),
        int(unilateral.sum()),
        int(both.sum()),
        int(readable.sum()),
        int(joined["model_b"].sum()),
    ]
    assert written["n"].tolist() == expected
    # With preprocess's QC exclusions (here: truth's QC-only artifacts) the after-QC rows are truth's.
    cohort = read_cohort(WorkPaths(synthetic["work"]).cohort_table)
    after_qc = funnel(cohort, qc_excluded=set(joined.loc[_qc_only(joined), "subject_id"])).set_index("step")
    assert after_qc.loc["Model A after QC", "n"] == int(joined["model_a_truth"].sum())
    assert after_qc.loc["Model B after QC", "n"] == int(joined["model_b_truth"].sum())


def test_table1_files_exist_with_p_values(synthetic: dict[str, Path]) -> None:
    ingest = WorkPaths(synthetic["work"]).ingest
    table = pd.read_csv(ingest / "table1.csv")
    model_a = table[table["group"] == "Model A"].set_index("parameter")
    for parameter in ("Percent female", "Age (years)", "BMI (kg/m2)"):
        assert 0.0 <= model_a.loc[parameter, "p_value"] <= 1.0
    assert "| Model A | Percent female |" in (ingest / "table1.md").read_text(encoding="utf-8")


def test_relaid_tree_gives_the_same_result(synthetic: dict[str, Path]) -> None:
    assert not list((synthetic["relaid"] / "images").rglob("*.csv"))
    assert (next(synthetic["relaid"].rglob("allclinical00.txt"))).exists()
    original, relaid = (read_cohort(WorkPaths(synthetic[k]).cohort_table) for k in ("work", "relaid_work"))
    pd.testing.assert_frame_equal(original, relaid)
    series = [
        pd.read_csv(WorkPaths(synthetic[k]).series_table, dtype={"subject_id": str})
        for k in ("work", "relaid_work")
    ]
    pd.testing.assert_frame_equal(series[0].drop(columns="path"), series[1].drop(columns="path"))
    assert series[1]["path"].str.contains(r"/OAI_Baseline_Package/00m/00m/0\.[ce]\.[12]/", regex=True).all()
    funnels = [pd.read_csv(WorkPaths(synthetic[k]).ingest / FUNNEL_TABLE) for k in ("work", "relaid_work")]
    pd.testing.assert_frame_equal(*funnels)
    shutil.rmtree(synthetic["relaid"])  # hard links only, but leave tmp small
