"""Cross-validation and single-split training runs: a plan of folds, a bundle per fold, predictions.

``plan_cv`` / ``plan_split`` make a :class:`RunPlan` (the train / validation / test subjects of
each fold) and ``run`` trains it; ``run_cv`` and ``run_split`` do both. A run writes
WORK/runs/<run>/ (docs/contracts.md): run.json, folds.json, fold_XX/bundle, fold_XX/metrics.jsonl,
fold_XX/predictions.csv and predictions.csv (every test subject exactly once, split ``test``).
folds.json is written once, when the run starts; ``--resume`` reads it back and trains exactly
its parts. A run is checked before anything is written, and every file is written atomically,
so a bad input or a NaN loss stops the run with a clear message and no half-written bundle.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kneepain import __version__
from kneepain.config import RunConfig, TrainConfig, load_config
from kneepain.console import console, safe
from kneepain.contracts import (
    BUNDLE_META,
    FOLDS_FILE,
    PREDICTION_COLUMNS,
    PREDICTIONS_TABLE,
    RUN_INFO,
    SPLIT_FILE,
    TEMPLATE_FILE,
    WorkPaths,
)
from kneepain.fileio import array_sha256, remove_stale_temporaries, write_csv, write_json
from kneepain.hardware import PrecisionChoice, resolve_precision
from kneepain.model.bundle import read_bundle_meta, save_bundle
from kneepain.model.siamese import ModelConfig, build_model
from kneepain.train.data import CacheBatches
from kneepain.train.estimate import describe_duration, expected_duration_line, time_training_step
from kneepain.train.folds import (
    SPLITS,
    SplitError,
    balance_report,
    read_folds,
    stratified_split,
    write_folds,
)
from kneepain.train.inputs import (
    RunInputError,
    cache_fingerprint,
    check_same_cache,
    load_inputs,
    training_acquisition,
    training_table_hash,
)
from kneepain.train.loop import Dist, TrainingError, auc_or_nan, init_distributed, pick_device, predict
from kneepain.train.plan import Parts, RunPlan, check_plan, plan_cv, plan_split
from kneepain.train.recipe import Part, remove_checkpoints, train_model
from kneepain.workers import kill_point

__all__ = [
    "RunInputError",
    "RunPlan",
    "bundle_templates",
    "cache_fingerprint",
    "plan_cv",
    "plan_split",
    "run",
    "run_cv",
    "run_split",
    "write_fold_bundle",
    "write_split",
]

BALANCE_TABLE = "split_balance.csv"


def bundle_templates(work: Path, fingerprint: dict[str, Any]) -> np.ndarray | None:
    """The registration templates every fold bundle carries (None when the cache does not register).

    Checked against the cache's configuration before training starts, so a mismatched
    template.npy stops the run at once instead of after the first fold. A registering cache
    without its template.npy (a hand-made test cache, say) gives bundles that train and
    evaluate but that ``predict`` refuses; the run says so.
    """
    if not fingerprint.get("register", True):
        return None
    path = WorkPaths(work).preprocess / TEMPLATE_FILE
    if not path.exists():
        console.print(
            f"[yellow]{safe(path)}: not found; the fold bundles will not be usable by `kneepain predict`"
        )
        return None
    try:
        templates = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise RunInputError(f"{path}: unreadable registration template ({error})") from error
    pinned = fingerprint.get("template_sha256")
    if pinned and array_sha256(templates) != pinned:
        raise RunInputError(
            f"{path}: not the template {WorkPaths(work).cache_config} was built with (hash differs)"
        )
    return templates


def write_fold_bundle(
    net: torch.nn.Module,
    bundle: Path,
    *,
    fingerprint: dict[str, Any],
    templates: np.ndarray | None,
    training: dict[str, Any],
    cohort_model: str,
    fold: int,
    summary: dict[str, Any],
    test_loss: float,
    acquisition: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """One fold's bundle: weights, model.json (preprocessing, the run's configuration, training,
    fold, the training cohort's acquisition for predict's protocol check) and the templates."""
    meta = {
        "config": config,
        "preprocessing": fingerprint,
        "acquisition": acquisition,
        "training": training,
        "cohort_model": cohort_model,
        "fold": fold,
        "summary": summary,
        "test_loss": test_loss,
    }
    return save_bundle(net.cpu(), meta, bundle, templates=templates)


def _part(table: pd.DataFrame, ids: tuple[str, ...]) -> Part:
    rows = table.set_index("subject_id").loc[list(ids)]
    return Part(rows["row"].to_numpy(np.int64), rows["label"].to_numpy(np.int64))


def _run_record(
    plan: RunPlan,
    config: RunConfig,
    train_config: TrainConfig,
    precision: PrecisionChoice,
    fingerprint: dict[str, Any],
    table: pd.DataFrame,
) -> dict[str, Any]:
    """run.json's content for a cross-validation (``cv``) or single-split (``split``) run.

    ``config`` is the configuration as given (precision ``auto`` stays ``auto``); ``training`` the
    loop's flat record with the precision resolved; ``precision`` the choice and its reason.
    """
    return {
        "kind": plan.kind,
        "work": str(plan.work.resolve()),
        "training_table_sha256": training_table_hash(table),
        "model": plan.model,
        "folds": plan.folds,
        "seed": plan.seed,
        "config": config.to_json(),
        "precision": precision.to_json(),
        "architecture": config.model.to_json(),
        "training": train_config.to_json(),
        "preprocessing": fingerprint,
        "package_version": __version__,
        "subjects": len(plan.predicted),
    }


def _prepare_run_dir(plan: RunPlan, record: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Check a resumed run matches (cache, training table, settings); refuse clobbering otherwise.

    A split run's folder already holds its split.json: it is never replaced, only refused when a
    model was trained in it.
    """
    info = plan.run_dir / RUN_INFO
    if resume:
        if not info.exists():
            raise RunInputError(f"{info}: nothing to resume")
        stored = json.loads(info.read_text(encoding="utf-8"))
        check_same_cache(stored.get("preprocessing", {}), record["preprocessing"], info)
        if (
            stored.get("training_table_sha256", record["training_table_sha256"])
            != record["training_table_sha256"]
        ):
            raise RunInputError(
                f"{info}: the run was started on another training table (cohort membership, labels or "
                "QC results changed since); start a new run (--run NAME) or pass --overwrite"
            )
        for key in ("model", "folds", "seed", "config", "architecture", "training", "kind"):
            if key == "config" and key not in stored:  # a run made before run.json recorded it
                continue
            if stored.get(key) != record.get(key):
                raise RunInputError(
                    f"{info}: the run was started with {key} = {stored.get(key)!r}, not {record.get(key)!r}"
                )
        remove_stale_temporaries(plan.run_dir, recursive=True)
    elif plan.kind == "split":
        if info.exists():
            raise RunInputError(
                f"{info}: a model was already trained in this run; pass --resume or use another run"
            )
    elif plan.run_dir.exists() and any(plan.run_dir.iterdir()):
        if not overwrite:
            raise RunInputError(
                f"{plan.run_dir}: run exists; pass --resume to continue it or --overwrite to replace it"
            )
        shutil.rmtree(plan.run_dir)


@dataclass(frozen=True)
class _Inputs:
    """What every fold of a run shares: training table, cache, its fingerprint and templates,
    the cohort's acquisition and the configuration recorded in each bundle."""

    table: pd.DataFrame
    cache: np.ndarray
    fingerprint: dict[str, Any]
    templates: np.ndarray | None
    acquisition: dict[str, Any] | None
    config: RunConfig
    train_config: TrainConfig


def fold_finished(plan: RunPlan, k: int) -> bool:
    """Fold ``k`` of ``plan`` has its bundle and test predictions (a resume reads them back)."""
    fold_dir = plan.run_dir / f"fold_{k:02d}"
    return (fold_dir / "bundle" / BUNDLE_META).exists() and (fold_dir / PREDICTIONS_TABLE).exists()


def announce_duration(plan: RunPlan, config: RunConfig, device: torch.device, resume: bool) -> str:
    """Time the configuration here and print the expected duration of the folds still to train,
    counted from the plan's own parts (mean part sizes over those folds)."""
    todo = [part for k, part in enumerate(plan.parts) if not (resume and fold_finished(plan, k))]

    def mean(sizes: list[int]) -> int:
        return round(sum(sizes) / len(sizes)) if sizes else 0

    line = expected_duration_line(
        config,
        time_training_step(config, device),
        models=len(todo),
        train_subjects=mean([len(part.train) for part in todo]),
        eval_subjects=mean([len(part.test) for part in todo]),
        validation_subjects=mean([len(part.validation) for part in todo]),
    )
    console.print(safe(line))
    return line


def _train_one(
    k: int,
    part: Parts,
    plan: RunPlan,
    inputs: _Inputs,
    *,
    resume: bool,
    device: torch.device,
    dist: Dist,
    show_progress: bool,
) -> pd.DataFrame:
    """Train fold ``k`` on its parts and return its test predictions (a finished fold is read back)."""
    fold_dir = plan.run_dir / f"fold_{k:02d}"
    bundle = fold_dir / "bundle"
    preds_path = fold_dir / PREDICTIONS_TABLE
    if resume and fold_finished(plan, k):
        check_same_cache(
            read_bundle_meta(bundle).get("preprocessing", {}), inputs.fingerprint, bundle / "model.json"
        )
        return pd.read_csv(preds_path, dtype={"subject_id": str})
    base = inputs.train_config
    config = base.__class__.from_json({**base.to_json(), "seed": base.seed + k})
    torch.manual_seed(config.seed)
    net = build_model(inputs.config.model)
    val = _part(inputs.table, part.validation) if part.validation else None
    summary = train_model(
        net,
        inputs.cache,
        _part(inputs.table, part.train),
        val,
        config,
        fold_dir,
        device=device,
        dist=dist,
        resume=resume,
        show_progress=show_progress,
    )
    net.eval()
    test = _part(inputs.table, part.test)
    batches = CacheBatches(
        inputs.cache,
        test.rows,
        test.labels,
        batch_size=config.batch_size,
        input_size=inputs.config.model.input_size,
    )
    prob, label, loss = predict(net, batches, device)
    if not np.all(np.isfinite(prob)):
        raise TrainingError(f"fold {k}: non-finite test probabilities; bundle not written")
    frame = pd.DataFrame(
        {"subject_id": list(part.test), "fold": k, "split": "test", "prob_right": prob, "label": label}
    )
    if dist.is_main:
        write_fold_bundle(
            net,
            bundle,
            fingerprint=inputs.fingerprint,
            templates=inputs.templates,
            training=config.to_json(),
            cohort_model=plan.model,
            fold=k,
            summary=summary,
            test_loss=loss,
            acquisition=inputs.acquisition,
            config=inputs.config.to_json(),
        )
        kill_point("cv:bundle_written")
        write_csv(preds_path, frame[PREDICTION_COLUMNS])
        remove_checkpoints(fold_dir)
    return frame


def _finish(run_dir: Path, frames: list[pd.DataFrame], expected: list[str], dist: Dist) -> pd.DataFrame:
    predictions = pd.concat(frames, ignore_index=True)[PREDICTION_COLUMNS].sort_values("subject_id")
    counts = predictions["subject_id"].value_counts()
    if set(counts.index) != set(expected) or (counts != 1).any():
        raise TrainingError(f"{run_dir}: out-of-fold table incomplete or duplicated; not written")
    if dist.is_main:
        write_csv(run_dir / PREDICTIONS_TABLE, predictions)
    return predictions


def _run_config(config: str | Path | RunConfig | tuple[ModelConfig, TrainConfig]) -> RunConfig:
    """A preset name or file, a RunConfig, or a (ModelConfig, TrainConfig) pair as a RunConfig."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, tuple):
        return RunConfig.from_parts(*config)
    return load_config(config)


def _device_and_precision(config: RunConfig) -> tuple[torch.device, Dist, TrainConfig, PrecisionChoice]:
    """The device, the DDP place, the loop's record with its precision resolved, and that choice."""
    train_config = config.training()
    device = pick_device(train_config)
    choice = resolve_precision(config.runtime.precision, device)
    console.print(f"precision {choice.precision} ({safe(choice.reason)})")
    return device, init_distributed(device), replace(train_config, precision=choice.precision), choice


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()


def run(
    plan: RunPlan,
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train ``plan`` (a bundle and test predictions per fold, then predictions.csv); returns its folder.

    Before anything is written: the inputs, a resumed run's run.json (same cache, training table
    and settings) and the plan against the training table are checked. folds.json is written when
    the plan was not read from it, so a run's folds are made once. Under torchrun every process
    trains (DDP); only rank 0 writes.
    """
    table, cache, fingerprint = load_inputs(plan.work, plan.model)
    templates = bundle_templates(plan.work, fingerprint)
    device, dist, train_config, precision = _device_and_precision(config)
    record = _run_record(plan, config, train_config, precision, fingerprint, table)
    run_dir, folds_path = plan.run_dir, plan.run_dir / FOLDS_FILE
    if dist.is_main:
        _prepare_run_dir(plan, record, resume, overwrite)
    check_plan(plan, table)
    if dist.is_main:
        write_json(run_dir / RUN_INFO, {**record, "status": "running"})
        if plan.source != folds_path:
            write_folds(
                folds_path,
                [list(part.test) for part in plan.parts],
                plan.seed,
                validation=[list(part.validation) for part in plan.parts],
                train=[list(part.train) for part in plan.parts],
            )
    if dist.is_main:
        announce_duration(plan, config, device, resume)
    _barrier(dist)
    start = time.perf_counter()
    # series.csv is read once for every fold's bundle
    inputs = _Inputs(
        table, cache, fingerprint, templates, training_acquisition(plan.work, table), config, train_config
    )
    frames, trained = [], []  # trained: seconds of each fold trained by this process (not read back)
    for k, part in enumerate(plan.parts):
        began = time.perf_counter()
        read_back = resume and fold_finished(plan, k)
        frame = _train_one(
            k, part, plan, inputs, resume=resume, device=device, dist=dist, show_progress=show_progress
        )
        frames.append(frame)
        if not read_back:
            trained.append(time.perf_counter() - began)
        kill_point("cv:fold_done")
        if dist.is_main:
            auc = auc_or_nan(frame["label"].to_numpy(), frame["prob_right"].to_numpy())
            left = len(plan.parts) - k - 1
            eta = (
                f", about {describe_duration(left * sum(trained) / len(trained))} left"
                if trained and left
                else ""
            )
            elapsed = time.perf_counter() - start
            console.print(f"fold {k}: {len(frame)} test subjects, AUC {auc:.3f}, {elapsed:.0f} s{eta}")
    _finish(run_dir, frames, plan.predicted, dist)
    if dist.is_main:
        read_folds(folds_path)
        write_json(
            run_dir / RUN_INFO, {**record, "status": "complete", "seconds": time.perf_counter() - start}
        )
    return run_dir


def run_cv(
    work: Path,
    run_name: str,
    *,
    folds: int = 10,
    model: str = "A",
    config: str | Path | RunConfig | tuple[ModelConfig, TrainConfig] = "paper",
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Path:
    """k-fold cross-validation on Model ``model``'s cohort; returns WORK/runs/<run_name>.

    ``config`` is a preset name (paper, small, tiny) or TOML file, a RunConfig, or a
    (ModelConfig, TrainConfig) pair; ``seed`` (of the folds) defaults to its ``runtime.seed``.
    """
    run_config = _run_config(config)
    seed = run_config.runtime.seed if seed is None else seed
    plan = plan_cv(
        work,
        run_name,
        folds=folds,
        model=model,
        seed=seed,
        val_fraction=run_config.data.val_fraction,
        resume=resume,
    )
    return run(plan, run_config, resume=resume, overwrite=overwrite, show_progress=show_progress)


def write_split(
    work: Path, run_name: str, *, model: str = "B", seed: int = 0, overwrite: bool = False
) -> Path:
    """The paper's 70/15/15 split (sex, age, BMI strata) as runs/<run>/split.json + split_balance.csv."""
    work = Path(work)
    table, _, _ = load_inputs(work, model.upper())
    try:
        assignment = stratified_split(table, seed)
    except SplitError as error:
        raise RunInputError(f"{WorkPaths(work).cohort_table} (Model {model}): {error}") from error
    run_dir = WorkPaths(work).runs / run_name
    if (run_dir / SPLIT_FILE).exists() and not overwrite:
        raise RunInputError(f"{run_dir / SPLIT_FILE}: exists; pass --overwrite to replace it")
    groups = {name: sorted(table.loc[assignment == name, "subject_id"]) for name in SPLITS}
    write_json(
        run_dir / SPLIT_FILE,
        {"seed": seed, "model": model.upper(), "stratified_by": ["sex", "age", "bmi"], **groups},
    )
    write_csv(run_dir / BALANCE_TABLE, balance_report(table, assignment))
    return run_dir


def run_split(
    work: Path,
    run_name: str,
    *,
    model: str = "B",
    config: str | Path | RunConfig | tuple[ModelConfig, TrainConfig] = "paper",
    seed: int | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> Path:
    """Train one model on the 70/15/15 split (train; early stopping on validation; test predicted).

    Writes the split first when runs/<run>/split.json is absent; predictions.csv holds the test
    part only (split ``test``), fold_00/bundle the model.
    """
    run_config = _run_config(config)
    seed = run_config.runtime.seed if seed is None else seed
    if not (WorkPaths(Path(work)).runs / run_name / SPLIT_FILE).exists():
        write_split(work, run_name, model=model, seed=seed)
    plan = plan_split(work, run_name, model=model, seed=seed, resume=resume)
    return run(plan, run_config, resume=resume, show_progress=show_progress)
