"""Cross-validation and single-split training runs: folds, a bundle per fold, out-of-fold table.

``run_cv`` writes WORK/runs/<run>/ (docs/contracts.md): run.json, folds.json, fold_XX/bundle,
fold_XX/metrics.jsonl, fold_XX/predictions.csv and predictions.csv (every subject exactly once,
split ``test``). ``run_split`` does the same for the paper's 70/15/15 review split (one "fold").
A run is checked before anything is written, and every file is written atomically, so a bad
input or a NaN loss stops the run with a clear message and no half-written bundle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from kneepain import __version__
from kneepain.config import RunConfig, TrainConfig, load_config
from kneepain.console import console, safe
from kneepain.contracts import (
    FOLDS_FILE,
    PREDICTION_COLUMNS,
    PREDICTIONS_TABLE,
    RUN_INFO,
    SPLIT_FILE,
    WorkPaths,
    open_cache,
    training_table,
)
from kneepain.fileio import remove_stale_temporaries, write_csv, write_json
from kneepain.hardware import PrecisionChoice, resolve_precision
from kneepain.model.bundle import read_bundle_meta, save_bundle
from kneepain.model.siamese import ModelConfig, build_model
from kneepain.protocol import summarize_acquisition
from kneepain.train.data import CacheBatches
from kneepain.train.folds import (
    SplitError,
    balance_report,
    check_folds,
    hold_out,
    make_folds,
    read_folds,
    stratified_split,
    write_folds,
)
from kneepain.train.loop import Dist, TrainingError, auc_or_nan, init_distributed, pick_device, predict
from kneepain.train.recipe import Part, remove_checkpoints, train_model
from kneepain.workers import kill_point

BALANCE_TABLE = "split_balance.csv"
INFORMATIVE_CACHE_KEYS = ("package_version", "subjects")


class RunInputError(ValueError):
    """The work folder or the requested run cannot be used as asked (the message says why)."""


def cache_fingerprint(work: Path) -> dict[str, Any]:
    """WORK/preprocess/config.json without its informative keys: two caches must match on this."""
    path = WorkPaths(work).cache_config
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RunInputError(
            f"{path}: preprocessing configuration not found (run `kneepain preprocess`)"
        ) from error
    except ValueError as error:
        raise RunInputError(f"{path}: not valid JSON ({error})") from error
    return {k: v for k, v in config.items() if k not in INFORMATIVE_CACHE_KEYS}


def check_same_cache(stored: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    """Refuse a cache built with another preprocessing configuration than ``where`` records."""
    stored = {k: v for k, v in stored.items() if k not in INFORMATIVE_CACHE_KEYS}
    if stored != current:
        keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        if keys == ["content_sha256"]:
            raise RunInputError(
                f"{where}: was made from another version of the slice cache (same configuration, but "
                "the cache was rebuilt since: its inputs changed); start a new run (--run NAME) or "
                "pass --overwrite to train again from the current cache"
            )
        raise RunInputError(
            f"{where}: was made from a slice cache with another preprocessing configuration "
            f"(differs in {keys}); use a new run name or rebuild the cache as it was"
        )


def training_table_hash(table: pd.DataFrame) -> str:
    """Hash of who is trained on, with which cache row and label: a resumed run must see the same."""
    rows = table[["subject_id", "row", "label"]].astype(str).values.tolist()
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def training_acquisition(work: Path, table: pd.DataFrame) -> dict[str, Any] | None:
    """The acquisition (slice thickness, pixel spacing) of the series of the subjects in ``table``."""
    path = WorkPaths(work).series_table
    if not path.exists():
        return None
    return summarize_acquisition(pd.read_csv(path, dtype={"subject_id": str}), table["subject_id"])


def load_inputs(work: Path, model: str) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """Training table, memory-mapped cache and cache fingerprint, checked against each other."""
    paths = WorkPaths(work)
    for needed in (paths.cohort_table, paths.cache_index, paths.cache_array):
        if not needed.exists():
            raise RunInputError(f"{needed}: not found (run ingest and preprocess first)")
    try:
        table = training_table(work, model)
        cache = open_cache(paths.cache_array)
    except ValueError as error:
        raise RunInputError(str(error)) from error
    if table.empty:
        raise RunInputError(f"{paths.cohort_table}: no Model {model} member has a QC-passed cache row")
    too_far = table.loc[table["row"] >= cache.shape[0], "subject_id"].tolist()
    if too_far:
        raise RunInputError(
            f"{paths.cache_array}: {cache.shape[0]} rows, but subjects {too_far[:10]} point past it"
        )
    bad = table.loc[~table["label"].isin([0, 1]), "subject_id"].tolist()
    if bad:
        raise RunInputError(f"{paths.cohort_table}: label must be 0 or 1; subjects {bad[:10]}")
    return table, cache, cache_fingerprint(work)


def bundle_templates(work: Path, fingerprint: dict[str, Any]) -> np.ndarray | None:
    """The registration templates every fold bundle carries (None when the cache does not register).

    Checked against the cache's configuration before training starts, so a mismatched
    template.npy stops the run at once instead of after the first fold. A registering cache
    without its template.npy (a hand-made test cache, say) gives bundles that train and
    evaluate but that ``predict`` refuses; the run says so.
    """
    from kneepain.preprocess.cache import TEMPLATE_FILE
    from kneepain.preprocess.config import array_sha256

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


def _run_record(
    kind: str,
    work: Path,
    model: str,
    folds: int,
    seed: int,
    config: RunConfig,
    train_config: TrainConfig,
    precision: PrecisionChoice,
    fingerprint: dict[str, Any],
    subjects: int,
) -> dict[str, Any]:
    """run.json's content for a cross-validation (``cv``) or single-split (``split``) run.

    ``config`` is the configuration as given (precision ``auto`` stays ``auto``); ``training`` the
    loop's flat record with the precision resolved; ``precision`` the choice and its reason.
    """
    return {
        "kind": kind,
        "work": str(work.resolve()),
        "training_table_sha256": "",  # filled in by the caller (training_table_hash)
        "model": model,
        "folds": folds,
        "seed": seed,
        "config": config.to_json(),
        "precision": precision.to_json(),
        "architecture": config.model.to_json(),
        "training": train_config.to_json(),
        "preprocessing": fingerprint,
        "package_version": __version__,
        "subjects": subjects,
    }


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


def _part(table: pd.DataFrame, ids: list[str]) -> Part:
    rows = table.set_index("subject_id").loc[ids]
    return Part(rows["row"].to_numpy(np.int64), rows["label"].to_numpy(np.int64))


def _prepare_run_dir(run_dir: Path, record: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Check a resumed run matches (cache, model, folds, configuration); refuse clobbering otherwise."""
    info = run_dir / RUN_INFO
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
        remove_stale_temporaries(run_dir, recursive=True)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunInputError(
                f"{run_dir}: run exists; pass --resume to continue it or --overwrite to replace it"
            )
        shutil.rmtree(run_dir)


def _train_one(
    k: int,
    run_dir: Path,
    table: pd.DataFrame,
    cache: np.ndarray,
    ids: dict[str, list[str]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    fingerprint: dict[str, Any],
    templates: np.ndarray | None,
    *,
    model: str,
    resume: bool,
    device: torch.device,
    dist: Dist,
    show_progress: bool,
    acquisition: dict[str, Any] | None = None,
    config_record: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Train fold ``k`` (ids: train / validation / test) and return its test predictions."""
    fold_dir = run_dir / f"fold_{k:02d}"
    bundle = fold_dir / "bundle"
    preds_path = fold_dir / PREDICTIONS_TABLE
    if resume and (bundle / "model.json").exists() and preds_path.exists():
        check_same_cache(
            read_bundle_meta(bundle).get("preprocessing", {}), fingerprint, bundle / "model.json"
        )
        return pd.read_csv(preds_path, dtype={"subject_id": str})
    config = train_config.__class__.from_json({**train_config.to_json(), "seed": train_config.seed + k})
    torch.manual_seed(config.seed)
    net = build_model(model_config)
    val = _part(table, ids["validation"]) if ids["validation"] else None
    summary = train_model(
        net,
        cache,
        _part(table, ids["train"]),
        val,
        config,
        fold_dir,
        device=device,
        dist=dist,
        resume=resume,
        show_progress=show_progress,
    )
    net.eval()
    test = _part(table, ids["test"])
    batches = CacheBatches(
        cache, test.rows, test.labels, batch_size=config.batch_size, input_size=model_config.input_size
    )
    prob, label, loss = predict(net, batches, device)
    if not np.all(np.isfinite(prob)):
        raise TrainingError(f"fold {k}: non-finite test probabilities; bundle not written")
    frame = pd.DataFrame(
        {"subject_id": ids["test"], "fold": k, "split": "test", "prob_right": prob, "label": label}
    )
    if dist.is_main:
        write_fold_bundle(
            net,
            bundle,
            fingerprint=fingerprint,
            templates=templates,
            training=config.to_json(),
            cohort_model=model,
            fold=k,
            summary=summary,
            test_loss=loss,
            acquisition=acquisition,
            config=config_record,
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
    Under torchrun every process trains (DDP); only rank 0 writes.
    """
    work = Path(work)
    model = model.upper()
    run_config = _run_config(config)
    seed = run_config.runtime.seed if seed is None else seed
    model_config = run_config.model
    table, cache, fingerprint = load_inputs(work, model)
    ids, labels = table["subject_id"].tolist(), table["label"].to_numpy()
    try:
        fold_ids = make_folds(ids, labels, folds, seed)
        plans = []
        for k, test_ids in enumerate(fold_ids):
            rest = table[~table["subject_id"].isin(test_ids)]
            train_ids, val_ids = hold_out(
                rest["subject_id"].tolist(), rest["label"].to_numpy(), run_config.data.val_fraction, seed + k
            )
            plans.append({"train": train_ids, "validation": val_ids, "test": test_ids})
        check_folds(fold_ids, ids, where=f"{run_name} folds")
    except SplitError as error:
        raise RunInputError(f"{WorkPaths(work).cohort_table} (Model {model}): {error}") from error
    run_dir = WorkPaths(work).runs / run_name
    templates = bundle_templates(work, fingerprint)
    device, dist, train_config, precision = _device_and_precision(run_config)
    record = _run_record(
        "cv", work, model, folds, seed, run_config, train_config, precision, fingerprint, len(ids)
    )
    record["training_table_sha256"] = training_table_hash(table)
    if dist.is_main:
        _prepare_run_dir(run_dir, record, resume, overwrite)
        write_json(run_dir / RUN_INFO, {**record, "status": "running"})
        write_folds(run_dir / FOLDS_FILE, fold_ids, seed, validation=[p["validation"] for p in plans])
    _barrier(dist)
    start = time.perf_counter()
    acquisition = training_acquisition(work, table)  # series.csv read once for every fold's bundle
    frames = []
    for k, plan in enumerate(plans):
        frame = _train_one(
            k,
            run_dir,
            table,
            cache,
            plan,
            model_config,
            train_config,
            fingerprint,
            templates,
            model=model,
            resume=resume,
            device=device,
            dist=dist,
            show_progress=show_progress,
            acquisition=acquisition,
            config_record=record["config"],
        )
        frames.append(frame)
        kill_point("cv:fold_done")
        if dist.is_main:
            auc = auc_or_nan(frame["label"].to_numpy(), frame["prob_right"].to_numpy())
            console.print(
                f"fold {k}: {len(frame)} test subjects, AUC {auc:.3f}, {time.perf_counter() - start:.0f} s"
            )
    _finish(run_dir, frames, ids, dist)
    if dist.is_main:
        read_folds(run_dir / FOLDS_FILE)
        write_json(
            run_dir / RUN_INFO, {**record, "status": "complete", "seconds": time.perf_counter() - start}
        )
    return run_dir


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()


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
    groups = {
        name: sorted(table.loc[assignment == name, "subject_id"]) for name in ("train", "validation", "test")
    }
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
    work = Path(work)
    model = model.upper()
    run_config = _run_config(config)
    seed = run_config.runtime.seed if seed is None else seed
    model_config = run_config.model
    run_dir = WorkPaths(work).runs / run_name
    if not (run_dir / SPLIT_FILE).exists():
        write_split(work, run_name, model=model, seed=seed)
    split = json.loads((run_dir / SPLIT_FILE).read_text(encoding="utf-8"))
    table, cache, fingerprint = load_inputs(work, model)
    check_folds([split["train"], split["validation"], split["test"]], where=str(run_dir / SPLIT_FILE))
    missing = sorted(set(split["train"] + split["validation"] + split["test"]) - set(table["subject_id"]))
    if missing:
        raise RunInputError(f"{run_dir / SPLIT_FILE}: subjects {missing[:10]} are not in the training table")
    for name in ("train", "test"):
        if table[table["subject_id"].isin(split[name])]["label"].nunique() < 2:
            raise RunInputError(f"{run_dir / SPLIT_FILE}: the {name} part has one class only")
    templates = bundle_templates(work, fingerprint)
    device, dist, train_config, precision = _device_and_precision(run_config)
    record = _run_record(
        "split", work, model, 1, seed, run_config, train_config, precision, fingerprint, len(split["test"])
    )
    record["training_table_sha256"] = training_table_hash(table)
    info = run_dir / RUN_INFO
    if resume:
        _prepare_run_dir(run_dir, record, True, False)
    elif info.exists():
        raise RunInputError(
            f"{info}: a model was already trained in this run; pass --resume or use another run"
        )
    if dist.is_main:
        write_json(info, {**record, "status": "running"})
        write_folds(run_dir / FOLDS_FILE, [split["test"]], seed, validation=[split["validation"]])
    _barrier(dist)
    start = time.perf_counter()
    acquisition = training_acquisition(work, table)
    frame = _train_one(
        0,
        run_dir,
        table,
        cache,
        split,
        model_config,
        train_config,
        fingerprint,
        templates,
        model=model,
        resume=resume,
        device=device,
        dist=dist,
        show_progress=show_progress,
        acquisition=acquisition,
        config_record=record["config"],
    )
    _finish(run_dir, [frame], split["test"], dist)
    if dist.is_main:
        write_json(info, {**record, "status": "complete", "seconds": time.perf_counter() - start})
    return run_dir
