"""One reader of a run folder (contracts.read_run_folder / read_test_predictions) serves cam and evaluate:
both refuse the same broken run.json or predictions.csv with the same message, in their own error class."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from kneepain.cam.compute import CamInputError, read_run
from kneepain.contracts import read_run_folder, read_test_predictions
from kneepain.evaluate.inputs import EvaluationInputError, load_run
from test_cam import make_run

Breakage = Callable[[Path], None]


def change_predictions(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Breakage:
    def apply(run: Path) -> None:
        table = pd.read_csv(run / "predictions.csv", dtype={"subject_id": str})
        change(table).to_csv(run / "predictions.csv", index=False)

    return apply


BREAKAGES: dict[str, tuple[Breakage, str]] = {
    "run_json_not_json": (lambda run: (run / "run.json").write_text("{work:"), r"run\.json: not valid JSON"),
    "run_json_a_list": (
        lambda run: (run / "run.json").write_text("[]"),
        r"run\.json: expected a JSON object",
    ),
    "no_predictions": (
        lambda run: (run / "predictions.csv").unlink(),
        r"predictions\.csv: predictions table not found",
    ),
    "predictions_empty": (
        lambda run: (run / "predictions.csv").write_text(""),
        r"predictions\.csv: predictions table is not a readable CSV",
    ),
    "column_missing": (
        change_predictions(lambda t: t.drop(columns="prob_right")),
        r"predictions\.csv: predictions table lacks column\(s\) \['prob_right'\]",
    ),
    "no_test_rows": (
        change_predictions(lambda t: t.assign(split="train")),
        r"predictions\.csv: no rows with split 'test' \(splits present: \['train'\]\)",
    ),
    "duplicated": (
        change_predictions(lambda t: pd.concat([t, t.iloc[[2]]])),
        r"predictions\.csv: subject\(s\) appear more than once with split 'test': 9000003",
    ),
    "nan_probability": (
        change_predictions(lambda t: t.assign(prob_right=t["prob_right"].where(t.index != 1))),
        r"predictions\.csv: column prob_right is NaN or not a number for subject\(s\) 9000002",
    ),
    "label_not_binary": (
        change_predictions(lambda t: t.assign(label=t["label"].where(t.index != 3, 2))),
        r"predictions\.csv: column label is not 0 or 1 for subject\(s\) 9000004",
    ),
    "fold_not_whole": (
        change_predictions(lambda t: t.assign(fold=t["fold"].where(t.index != 0, 0.5))),
        r"predictions\.csv: column fold is not a whole number for subject\(s\) 9000001",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_cam_and_evaluate_refuse_a_broken_run_with_the_same_message(tmp_path: Path, breakage: str) -> None:
    run = make_run(tmp_path)
    damage, message = BREAKAGES[breakage]
    damage(run)
    with pytest.raises(CamInputError) as cam_error:
        read_run(run)
    with pytest.raises(EvaluationInputError) as evaluate_error:
        load_run(run)
    assert re.search(message, str(cam_error.value)), cam_error.value
    assert str(cam_error.value) == str(evaluate_error.value)


def test_a_missing_run_folder_is_named(tmp_path: Path) -> None:
    absent = tmp_path / "runs" / "nothing"
    for reader, error in ((read_run, CamInputError), (load_run, EvaluationInputError)):
        with pytest.raises(error, match=f"{re.escape(str(absent))}: run folder not found"):
            reader(absent)


def test_the_shared_reader_gives_typed_test_rows_and_the_work_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    extra = pd.DataFrame(
        {"subject_id": ["9000001"], "fold": [0], "split": ["val"], "prob_right": [0.5], "label": [1]}
    )
    pd.concat([pd.read_csv(run / "predictions.csv", dtype={"subject_id": str}), extra]).to_csv(
        run / "predictions.csv", index=False
    )
    folder = read_run_folder(run)
    assert folder.work == tmp_path / "work"
    assert folder.info == json.loads((run / "run.json").read_text())
    test = read_test_predictions(folder.predictions_table)
    assert list(test.columns) == ["subject_id", "fold", "label", "prob_right"]
    assert test["subject_id"].tolist() == ["9000001", "9000002", "9000003", "9000004"]  # ids stay strings
    assert [str(test[c].dtype) for c in ("fold", "label", "prob_right")] == ["int64", "int64", "float64"]
    cam_subjects = read_run(run).subjects.set_index("subject_id")
    assert (cam_subjects.loc[test["subject_id"], "prob_right"].to_numpy() == test["prob_right"]).all()


def test_without_a_work_entry_the_run_sits_in_work_runs(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "run.json").unlink()
    assert read_run_folder(run).work == (tmp_path / "work").resolve()
    assert read_run(run).work == (tmp_path / "work").resolve()
