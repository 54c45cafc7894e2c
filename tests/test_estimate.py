"""The expected duration cv and train print: timed on this machine, reckoned per subject-epoch."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from kneepain.cli import app
from kneepain.config import load_config
from kneepain.train.estimate import (
    StepTiming,
    describe_duration,
    expected_duration_line,
    run_seconds,
    time_training_step,
)
from workfolder import make_work


def test_timing_follows_the_network_size() -> None:
    tiny = load_config("tiny").with_overrides(["model.width=0.0625", "model.input_size=32"])
    wide = tiny.with_overrides(["model.width=0.5", "model.input_size=128"])
    small, big = time_training_step(tiny), time_training_step(wide)
    assert math.isfinite(small.seconds_per_subject_epoch) and small.seconds_per_subject_epoch > 0
    # 8x the channels at 16x the pixels (~100x the FLOPs): far more than load noise or call overhead
    assert big.seconds_per_subject_epoch > 3 * small.seconds_per_subject_epoch
    assert small.device == "cpu" and small.precision in ("fp32", "bf16") and small.slices_timed >= 2


def test_ensemble_members_multiply_the_cost() -> None:
    one = load_config("tiny")
    timing = StepTiming(0.1, "cpu", "fp32", 16, 2)
    assert run_seconds(timing, 100, 10, 5) == pytest.approx(0.1 * 100 * 5 + 0.1 / 3 * 10)
    assert run_seconds(timing, 100, 10, 5, validation_subjects=20) == pytest.approx(
        0.1 * 500 + 0.1 / 3 * (20 * 5 + 10)
    )
    three = time_training_step(one.with_overrides(["model.members=3"]))
    assert three.seconds_per_subject_epoch > 0


def test_the_paper_preset_on_a_cpu_names_the_small_preset() -> None:
    paper, small = load_config("paper"), load_config("small")
    slow = StepTiming(40.0, "cpu", "fp32", 2, 2)
    line = expected_duration_line(paper, slow, models=10, train_subjects=200, eval_subjects=24)
    assert "days" in line and "--preset small" in line and "10 model(s) x 500 epochs" in line
    quick = StepTiming(0.02, "cpu", "fp32", 736, 2)
    line = expected_duration_line(small, quick, models=10, train_subjects=200, eval_subjects=24)
    assert "--preset small" not in line and "min" in line
    on_gpu = StepTiming(40.0, "cuda:0", "bf16", 2, 2)
    line = expected_duration_line(paper, on_gpu, models=10, train_subjects=200, eval_subjects=24)
    assert "--preset small" not in line
    assert describe_duration(42) == "42 s" and describe_duration(3 * 3600) == "3.0 h"
    assert describe_duration(5 * 86400) == "5 days"


def test_cv_and_train_print_the_expected_duration_first(tmp_path: Path) -> None:
    work = make_work(tmp_path, n=24, size=16)
    runner = CliRunner()
    ran = runner.invoke(
        app, ["cv", str(work), "--run", "est", "--folds", "2", "--preset", "tiny", "--epochs", "1"]
    )
    assert ran.exit_code == 0, ran.output
    assert "expected duration: about" in ran.output and "2 model(s) x 1 epochs" in ran.output
    assert ran.output.index("expected duration") < ran.output.index("fold 0")
    fold_lines = [line for line in ran.output.splitlines() if line.startswith("fold ")]
    assert " left" in fold_lines[0] and " left" not in fold_lines[1]  # the last fold leaves nothing
    again = runner.invoke(
        app,
        ["cv", str(work), "--run", "est", "--folds", "2", "--preset", "tiny", "--epochs", "1", "--resume"],
    )
    assert again.exit_code == 0, again.output
    assert "0 model(s)" in again.output  # both folds are done: nothing left to train
    split = runner.invoke(app, ["train", str(work), "--run", "rv", "--preset", "tiny", "--epochs", "1"])
    assert split.exit_code == 0, split.output
    assert "1 model(s) x 1 epochs" in split.output
