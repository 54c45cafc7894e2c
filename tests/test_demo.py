"""`kneepain demo --fast`: the whole chain from synthetic cohort to report, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from kneepain.demo import DEMO_RECORD, PREDICT_EXAMPLE, DemoOptions, demo_steps, localization_verdict

STAGES = ["synth", "ingest", "preprocess", "cross-validation", "evaluate", "cam", "report"]


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kneepain", "demo", "--fast", "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, _demo(out, "--workers", "2")


def test_fast_demo_runs_every_stage_and_reports_honestly(fast_demo) -> None:
    out, completed = fast_demo
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads((out / DEMO_RECORD).read_text())
    assert record["status"] == "complete"
    assert set(record["seconds"]) == {*STAGES, "total"}
    numbers = record["headline"]
    assert numbers["synthetic"] is True
    # The headline AUC is the pooled out-of-fold AUC of the run's own predictions table.
    predictions = pd.read_csv(out / "work" / "runs" / "demo" / "predictions.csv")
    evaluated = json.loads((out / "work" / "runs" / "demo" / "evaluation" / "metrics.json").read_text())
    kept = predictions[
        ~predictions["subject_id"].astype(str).isin([e["subject_id"] for e in evaluated["excluded"]])
    ]
    assert numbers["n"] == len(kept) > 0
    assert abs(numbers["auc"] - roc_auc_score(kept["label"], kept["prob_right"])) < 1e-9
    bundle_meta = json.loads(
        (out / "work" / "runs" / "demo" / "fold_00" / "bundle" / "model.json").read_text()
    )
    assert bundle_meta["acquisition"]["slice_thickness_mm"] > 0  # for predict's protocol check
    low, high = numbers["auc_ci_delong"]
    assert low <= numbers["auc"] <= high
    assert 0.5 < numbers["oracle_auc"] <= 1.0
    assert numbers["area_above_half_pct_mean"] > 0
    if numbers["pointing_hit_rate_correct_ours"] is not None:  # several folds: every rule is measured
        assert 0.0 <= numbers["pointing_hit_rate_correct_prior"] <= 1.0
    report = Path(numbers["report"])
    assert report.exists() and "synthetic" in report.read_text().lower()
    assert "SYNTHETIC DATA" in completed.stderr + completed.stdout
    assert str(report) in (completed.stderr + completed.stdout).replace("\n", "")
    run = out / "work" / "runs" / "demo"
    predictions = (run / "predictions.csv").read_text().splitlines()
    assert len(predictions) - 1 >= numbers["n"]
    assert (run / "cam" / "localization.json").exists()


def test_demo_prints_a_predict_command_for_a_participant_fold_00_never_saw(fast_demo, tmp_path: Path) -> None:
    out, completed = fast_demo
    assert completed.returncode == 0, completed.stderr[-3000:]
    example = json.loads((out / DEMO_RECORD).read_text())["headline"]["predict_example"]
    folds = json.loads((out / "work" / "runs" / "demo" / "folds.json").read_text())["folds"]
    assert example["subject_id"] in folds[0]  # fold_00's test part: never in its training data
    assert example["command"] in completed.stdout + completed.stderr  # printed whole, not wrapped
    script = out / PREDICT_EXAMPLE
    assert example["command"] in script.read_text()
    ran = subprocess.run(  # as the README runs it: a fresh shell, no virtual environment active
        ["sh", str(script), "--json"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    prediction = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert example["subject_id"] in json.dumps(prediction)


def test_headline_says_plainly_when_the_cam_rule_loses_to_the_fixed_point() -> None:
    losing = {"pointing_hit_rate_correct_ours": 0.624, "pointing_hit_rate_correct_constant": 0.79}
    assert localization_verdict(losing).startswith(
        "Our CAM rule alone loses to the CAM-free fixed point: 62.4%"
    )
    winning = {**losing, "pointing_hit_rate_correct_ours": 0.9, "pointing_hit_rate_correct_prior": 0.95}
    assert "beats" in localization_verdict(winning) and "95.0%, above the point" in localization_verdict(
        winning
    )
    assert localization_verdict({}) == ""


def test_demo_with_other_options_in_the_same_folder_is_refused(fast_demo) -> None:
    out, completed = fast_demo
    assert completed.returncode == 0, completed.stderr[-3000:]
    before = (out / DEMO_RECORD).read_bytes()
    again = _demo(out, "--subjects", "12")
    assert again.returncode == 2
    assert DEMO_RECORD in again.stderr and "choose a new --out" in again.stderr
    assert (out / DEMO_RECORD).read_bytes() == before


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    completed = _demo(tmp_path)
    assert completed.returncode == 2 and "not empty" in completed.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_resumed_demo_keeps_the_cohort_and_continues_cross_validation(fast_demo) -> None:
    out, completed = fast_demo
    assert completed.returncode == 0, completed.stderr[-3000:]
    options = DemoOptions(out=out, subjects=40, seed=1, fast=True, folds=3)
    steps = {step.name: step.args for step in demo_steps(options, resume=True)}
    assert "synth" not in steps
    assert "--resume" in steps["cross-validation"]
    fresh = {step.name: step.args for step in demo_steps(options, resume=False)}
    assert "synth" in fresh and "--resume" not in fresh["cross-validation"]
