"""Training: batches from the slice cache, the training loop, folds and splits, cross-validation."""

from kneepain.config import RunConfig, TrainConfig, load_config, preset
from kneepain.train.cv import RunInputError, RunPlan, plan_cv, plan_split, run, run_cv, run_split, write_split
from kneepain.train.folds import SplitError, balance_report, make_folds, read_folds, stratified_split
from kneepain.train.loop import TrainingError, fit

__all__ = [
    "RunConfig",
    "RunInputError",
    "RunPlan",
    "SplitError",
    "TrainConfig",
    "TrainingError",
    "balance_report",
    "fit",
    "load_config",
    "make_folds",
    "plan_cv",
    "plan_split",
    "preset",
    "read_folds",
    "run",
    "run_cv",
    "run_split",
    "stratified_split",
    "write_split",
]
