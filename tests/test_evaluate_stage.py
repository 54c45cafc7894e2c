"""`kneepain evaluate` end to end on small cohort and predictions tables written as real files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from kneepain.cli import app
from kneepain.contracts import COHORT_COLUMNS, PREDICTION_COLUMNS

N_BOOT = "200"  # enough to exercise the bootstrap, small enough for 2 shared cores


def write_cohort(work: Path, n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A cohort table following the contract: ids as 7-digit strings, a few KL grades missing."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    cohort = pd.DataFrame(
        {
            "subject_id": [f"{9000100 + i}" for i in range(n)],
            "label": label,
            "pain_right": label * 5,
            "pain_left": (1 - label) * 5,
            "womac_right": label * 6.0,
            "womac_left": (1 - label) * 6.0,
            "kl_right": rng.integers(0, 5, n).astype(float),
            "kl_left": rng.integers(0, 5, n).astype(float),
            "age": rng.integers(45, 80, n),
            "sex": rng.choice(["female", "male"], n),
            "bmi": np.round(rng.normal(29, 4, n), 1),
            "has_left_series": True,
            "has_right_series": True,
            "model_a": True,
            "model_b": rng.random(n) < 0.6,
            "exclusion": "",
        },
        columns=COHORT_COLUMNS,
    )
    cohort.loc[[3, 7], "kl_left"] = np.nan
    (work / "ingest").mkdir(parents=True, exist_ok=True)
    cohort.to_csv(work / "ingest" / "cohort.csv", index=False)
    return cohort


def write_run(
    work: Path, name: str, cohort: pd.DataFrame, seed: int = 1, model: str = "A", **info: object
) -> Path:
    """A run folder: out-of-fold predictions (every member once, split test) and run.json."""
    rng = np.random.default_rng(seed)
    members = cohort[cohort[f"model_{model.lower()}"]].reset_index(drop=True)
    logit = (members["label"] - 0.5) * 1.5 + rng.normal(size=len(members))
    predictions = pd.DataFrame(
        {
            "subject_id": members["subject_id"],
            "fold": np.arange(len(members)) % 3,
            "split": "test",
            "prob_right": np.round(1 / (1 + np.exp(-logit)), 4),
            "label": members["label"],
        },
        columns=PREDICTION_COLUMNS,
    )
    run = work / "runs" / name
    run.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(run / "predictions.csv", index=False)
    (run / "run.json").write_text(json.dumps({"work": str(work), "model": model, **info}))
    return run


def evaluate(*args: str) -> object:
    return CliRunner().invoke(app, ["evaluate", *args, "--bootstrap", N_BOOT, "--seed", "7"])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path / "work"


def test_evaluate_writes_every_file_and_numbers_from_the_tables(work: Path) -> None:
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort, config={"architecture": "kneenet"})
    result = evaluate(str(run))
    assert result.exit_code == 0, result.output
    out = run / "evaluation"
    expected = "metrics.json roc.png roc.svg subgroups.csv subgroups.md comparisons.csv comparisons.md"
    for name in [*expected.split(), "calibration.png", "calibration.csv"]:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    assert metrics["n"] == 60
    assert metrics["auc"] == pytest.approx(roc_auc_score(predictions["label"], predictions["prob_right"]))
    low, high = metrics["auc_ci_delong"]
    assert low < metrics["auc"] < high
    assert metrics["bootstrap"] == {"n_resamples": 200, "n_used": 200, "seed": 7}
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AUC" in (out / "roc.svg").read_text()
    subgroups = pd.read_csv(out / "subgroups.csv")
    assert subgroups.set_index("subgroup").loc["kl_difference_0", "reduced"]  # two KL grades missing
    assert pd.read_csv(out / "calibration.csv")["n"].sum() == 60


def test_evaluate_is_deterministic(work: Path) -> None:
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort)
    assert evaluate(str(run)).exit_code == 0
    first = {p.name: p.read_bytes() for p in (run / "evaluation").iterdir()}
    assert evaluate(str(run)).exit_code == 0
    second = {p.name: p.read_bytes() for p in (run / "evaluation").iterdir()}
    assert first == second


def test_paired_comparison_uses_common_subjects_and_says_how_many(work: Path) -> None:
    cohort = write_cohort(work)
    model_a = write_run(work, "model_a", cohort, seed=1, model="A")
    model_b = write_run(work, "model_b", cohort, seed=2, model="B")
    result = evaluate(str(model_a), "--compare", str(model_b))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(model_a / "evaluation" / "comparisons.csv")
    n_b = int(cohort["model_b"].sum())
    assert table.loc[0, "n_common"] == n_b and table.loc[0, "n_only_run"] == 60 - n_b
    assert table.loc[0, "n_only_other"] == 0
    assert "model: A vs B" in table.loc[0, "differs"]
    assert 0 <= table.loc[0, "p_value"] <= 1
    assert f"{n_b} ({60 - n_b} + 0)" in (model_a / "evaluation" / "comparisons.md").read_text()


def break_predictions(run: Path, change) -> None:
    table = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    change(table).to_csv(run / "predictions.csv", index=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(index=5), "missing from the predictions, with no QC failure on record: 9000105"),
        (lambda t: pd.concat([t, t.iloc[[4]]]), "more than once with split 'test': 9000104"),
        (lambda t: t.replace({"subject_id": {"9000102": "9999999"}}), "not in the cohort table"),
        (lambda t: t.assign(prob_right=t["prob_right"].where(t.index != 9)), "prob_right is NaN.*9000109"),
        (
            lambda t: t.assign(label=t["label"].where(t.index != 2, 1 - t["label"])),
            r"label disagrees.*subject\(s\) 9000102$",
        ),
    ],
    ids=["missing", "duplicated", "other_cohort", "nan_probability", "label_mismatch"],
)
def test_bad_predictions_are_refused_with_the_subject_named_and_old_output_kept(
    work: Path,
    change,
    message: str,
) -> None:
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort)
    assert evaluate(str(run)).exit_code == 0
    before = (run / "evaluation" / "metrics.json").read_bytes()
    break_predictions(run, change)
    result = evaluate(str(run))
    assert result.exit_code == 2
    assert re.search(message, " ".join(result.output.split())), result.output
    assert "predictions.csv" in result.output
    assert (run / "evaluation" / "metrics.json").read_bytes() == before


def test_a_subject_excused_by_qc_is_recorded_not_refused(work: Path) -> None:
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort)
    break_predictions(run, lambda t: t.drop(index=[5, 6]))
    (work / "preprocess").mkdir()
    pd.DataFrame(
        {
            "row": [0],
            "subject_id": ["9000105"],
            "centre_left": [10],
            "centre_right": [11],
            "qc_pass": [False],
            "qc_reason": ["blank slices"],
        }
    ).to_csv(work / "preprocess" / "index.csv", index=False)
    assert "9000106" in evaluate(str(run)).output  # 9000106 has no QC reason: refused
    result = CliRunner().invoke(app, ["evaluate", str(run), "--bootstrap", "50", "--allow-missing"])
    assert result.exit_code == 0, result.output
    excluded = json.loads((run / "evaluation" / "metrics.json").read_text())["excluded"]
    assert excluded == [
        {"subject_id": "9000105", "reason": "failed QC: blank slices"},
        {"subject_id": "9000106", "reason": "absent from predictions (--allow-missing)"},
    ]


def test_unusable_tables_give_a_clear_error_not_a_traceback(work: Path) -> None:
    cohort = write_cohort(work)
    cohort.loc[4, "sex"] = "F"
    cohort.to_csv(work / "ingest" / "cohort.csv", index=False)
    run = write_run(work, "kneenet", cohort)
    result = evaluate(str(run))
    assert result.exit_code == 2
    assert "column sex must be 'female' or 'male'; subject(s) 9000104" in " ".join(result.output.split())
    break_predictions(run, lambda t: t.assign(label=1))
    cohort.assign(label=1, sex="male").to_csv(work / "ingest" / "cohort.csv", index=False)
    result = evaluate(str(run))
    assert result.exit_code == 2
    assert "AUC undefined: all 60 subjects have label 1" in " ".join(result.output.split())


def test_the_run_is_drawn_over_the_packaged_learning_curve(work: Path) -> None:
    from kneepain.evaluate.cohort_size import read_learning_curve
    from kneepain.report.html import build_report

    curve = read_learning_curve()
    assert curve is not None, "the package carries kneepain/evaluate/learning_curve.json"
    assert curve["synthetic"] is True and curve["sizes"]
    cohort = write_cohort(work)
    run = write_run(work, "kneenet", cohort)
    assert evaluate(str(run)).exit_code == 0
    out = run / "evaluation"
    assert (out / "cohort_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    reference = metrics["cohort_size_reference"]
    assert reference["run_n_evaluated"] == metrics["n"] == 60
    assert reference["run_auc"] == metrics["auc"]
    # the curve's size whose evaluated participants are nearest to 60
    nearest = min(curve["sizes"], key=lambda s: abs(s["n_evaluated_mean"] - 60))
    assert reference["cohort_size"] == nearest["size"]
    assert reference["auc_mean"] == nearest["auc_mean"]
    html = build_report(run).read_text()
    assert 'id="cohort_size-image"' in html
    assert "describes the generator, not patients" in html


def test_the_nearest_size_follows_the_evaluated_participants() -> None:
    from kneepain.evaluate.cohort_size import cohort_size_caption, cohort_size_reference

    def size(n: int, evaluated: float, auc: float) -> dict[str, object]:
        return {"size": n, "seeds_done": [1, 2, 3], "n_evaluated_mean": evaluated, "auc_mean": auc,
                "auc_sd_between_seeds": 0.05, "oracle_mean": 0.9, "gap_mean": 0.9 - auc,
                "gap_sd_between_seeds": 0.04}  # fmt: skip

    curve = {"plan": {"preset": "small", "folds": 5}, "sizes": [size(100, 82, 0.6), size(300, 245, 0.8)]}
    assert cohort_size_reference(curve, 150, 0.7)["cohort_size"] == 100  # 68 from 82, 95 from 245
    reference = cohort_size_reference(curve, 200, 0.7)
    assert reference["cohort_size"] == 300
    assert "3 synthetic cohorts of 300 participants (about 245 evaluated) gave AUC 0.800 ± 0.050" in (
        cohort_size_caption(reference)
    )
    single = curve["sizes"][1] | {"auc_sd_between_seeds": None, "gap_sd_between_seeds": None}
    alone = cohort_size_reference(curve | {"sizes": [single]}, 200, 0.7)  # one cohort done: no SD
    assert "AUC 0.800 (one cohort: no spread yet)" in alone["caption"]
