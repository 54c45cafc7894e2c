"""Run plans: cv and split both train through ``run(plan)``; folds.json is made once, read back
on resume (not recomputed) and refused when its parts overlap or name unknown subjects."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import kneepain.train.cv as cv
import kneepain.train.plan as plan
from kneepain.contracts import training_table
from kneepain.train import RunInputError, preset, run_cv, run_split
from workfolder import make_work


def _tiny():
    return preset("tiny", {}, {"device": "cpu", "epochs": 1})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A work folder with a finished 2-fold cv run ``cv``."""
    work = make_work(tmp_path_factory.mktemp("plan") / "work", n=30, size=16)
    run_cv(work, "cv", folds=2, config=_tiny(), show_progress=False)
    return work


@pytest.fixture
def work(finished: Path, tmp_path: Path) -> Path:
    """A copy of ``finished`` that a test may edit."""
    return Path(shutil.copytree(finished, tmp_path / "work"))


def _no_fold_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a resumed run recomputed its folds")

    monkeypatch.setattr(plan, "make_folds", refuse)
    monkeypatch.setattr(plan, "hold_out", refuse)


def _unfinish(run: Path) -> None:
    """As if killed before any fold finished: run.json and folds.json only."""
    for path in run.iterdir():
        if path.name not in ("run.json", "folds.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def test_a_resumed_run_trains_the_folds_folds_json_records(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = work / "runs" / "cv"
    recorded = json.loads((run / "folds.json").read_text())
    first, second = recorded["folds"]
    swapped = [sorted(first[1:] + second[:1]), sorted(second[1:] + first[:1])]  # not what the rule gives
    ids = training_table(work, "A")["subject_id"].tolist()
    edited = {
        "seed": recorded["seed"],
        "n_folds": 2,
        "folds": swapped,
        "validation": [[], []],
        "train": [[s for s in ids if s not in test] for test in swapped],
    }
    _unfinish(run)
    (run / "folds.json").write_text(written := json.dumps(edited))
    _no_fold_rule(monkeypatch)
    run_cv(work, "cv", folds=2, config=_tiny(), resume=True, show_progress=False)
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    for k, test in enumerate(swapped):
        assert sorted(predictions.loc[predictions["fold"] == k, "subject_id"]) == test
    assert (run / "folds.json").read_text() == written  # read back, never rewritten


def test_a_folds_json_without_train_parts_resumes_to_the_same_predictions(
    work: Path, finished: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folds.json written before it recorded ``train``: each fold trains on the rest, as it did."""
    run = work / "runs" / "cv"
    recorded = json.loads((run / "folds.json").read_text())
    del recorded["train"]
    _unfinish(run)
    (run / "folds.json").write_text(json.dumps(recorded))
    _no_fold_rule(monkeypatch)
    run_cv(work, "cv", folds=2, config=_tiny(), resume=True, show_progress=False)
    again = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    first = pd.read_csv(finished / "runs" / "cv" / "predictions.csv", dtype={"subject_id": str})
    pd.testing.assert_frame_equal(again, first)


def _in_validation_and_test(folds: dict) -> str:
    subject = folds["folds"][0][0]
    folds["validation"][0].append(subject)
    return rf"folds\.json: subject {subject} is in both the validation and the test part of fold 0"


def _in_train_and_test(folds: dict) -> str:
    subject = folds["folds"][1][-1]
    folds["train"][1].append(subject)
    return rf"folds\.json: subject {subject} is in both the train and the test part of fold 1"


def _in_two_test_folds(folds: dict) -> str:
    subject = folds["folds"][0][0]
    folds["folds"][1].append(subject)
    folds["train"][1].remove(subject)
    return rf"folds\.json: subject {subject} is in fold 0 and fold 1"


def _in_no_test_fold(folds: dict) -> str:
    subject = folds["folds"][0].pop()
    return rf"folds\.json: subjects missing from folds \['{subject}'\]"


def _unknown(folds: dict) -> str:
    folds["train"][0].append("0000001")
    return r"folds\.json: subjects \['0000001'\] of fold 0 are not in the training table"


@pytest.mark.parametrize(
    "edit", [_in_validation_and_test, _in_train_and_test, _in_two_test_folds, _in_no_test_fold, _unknown]
)
def test_an_edited_folds_json_is_refused_on_resume(work: Path, edit) -> None:
    run = work / "runs" / "cv"
    folds = json.loads((run / "folds.json").read_text())
    message = edit(folds)
    (run / "folds.json").write_text(json.dumps(folds))
    info = (run / "run.json").read_text()
    with pytest.raises(RunInputError, match=message):
        run_cv(work, "cv", folds=2, config=_tiny(), resume=True, show_progress=False)
    assert (run / "run.json").read_text() == info  # refused before anything was written


def test_a_resume_asking_for_other_folds_is_refused(work: Path) -> None:
    with pytest.raises(RunInputError, match=r"folds\.json: holds 2 folds, not the 3 asked for"):
        run_cv(work, "cv", folds=3, config=_tiny(), resume=True, show_progress=False)


def test_cv_and_split_both_train_through_run(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned = []
    train = cv.run

    def spy(given: cv.RunPlan, *args, **kwargs) -> Path:
        planned.append((given.kind, given.folds))
        return train(given, *args, **kwargs)

    monkeypatch.setattr(cv, "run", spy)
    run_cv(work, "again", folds=2, config=_tiny(), show_progress=False)
    run = run_split(work, "split", config=_tiny(), show_progress=False)
    assert planned == [("cv", 2), ("split", 1)]
    split = json.loads((run / "split.json").read_text())
    folds = json.loads((run / "folds.json").read_text())
    assert folds["n_folds"] == 1
    assert folds["folds"] == [split["test"]] and folds["validation"] == [split["validation"]]
    assert folds["train"] == [split["train"]]
    predictions = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
    assert sorted(predictions["subject_id"]) == split["test"]
    # A split.json rewritten after the run began no longer describes it: resuming is refused.
    split["train"], split["test"] = split["train"][1:], [*split["test"], split["train"][0]]
    (run / "split.json").write_text(json.dumps(split))
    with pytest.raises(RunInputError, match=r"folds\.json: the run's parts differ from .*split\.json"):
        run_split(work, "split", config=_tiny(), resume=True, show_progress=False)
