"""Compute each test subject's class activation maps with the bundle of the fold that held it out.

The maps come from the model's own ``forward_with_cams`` (final feature maps times the classifier
weights of each slice location, in the same pass as the prediction), never from a generic
Grad-CAM hook: a Siamese branch is used twice per pair, so a per-layer hook would mix both knees.
Out-of-fold: a subject's maps come from the one bundle that never saw it in training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kneepain import __version__
from kneepain.contracts import (
    BUNDLE_META,
    CACHE_ARRAY,
    CACHE_INDEX,
    KNEES,
    LABEL_RIGHT_PAINFUL,
    N_SLICES,
    PREDICTIONS_TABLE,
    PREPROCESS_DIR,
    RunFolderError,
    open_cache,
    read_cache_index,
    read_run_folder,
    read_run_info,
    read_test_predictions,
    run_work_folder,
)
from kneepain.fileio import atomic_path, write_csv, write_json
from kneepain.workers import kill_point

CAM_DIR = "cam"
CAM_ARRAY = "cams.npy"
CAM_INDEX = "index.csv"
CAM_META = "meta.json"
OVERLAY_DIR = "overlays"
CAM_INDEX_COLUMNS = [
    "subject_id",
    "cache_row",
    "fold",
    "label",
    "prob_right",
    "painful_side",
    "predicted_side",
    "correct",
    "best_slice",
    "cam_mean_painful",
    "cam_mean_other",
]

if TYPE_CHECKING:
    from kneepain.model.bundle import Bundle

BundleLoader = Callable[[Path], "Bundle"]


class CamInputError(ValueError):
    """A run, cache or bundle the CAM stage needs is missing or inconsistent; the message names it."""


@dataclass
class RunInputs:
    """What the CAM stage reads from a run folder and its work folder."""

    run_dir: Path
    info: dict[str, Any]
    work: Path
    run_id: str
    subjects: pd.DataFrame  # one row per test subject: subject_id, fold, prob_right, label, cache_row


@dataclass
class CamResult:
    """Raw CAMs (subjects, 2 knees, 23 slices, h, w) and their index table, in the same row order."""

    cams: np.ndarray
    index: pd.DataFrame
    meta: dict[str, Any]


@contextlib.contextmanager
def _cam_input_errors() -> Iterator[None]:
    """Report a run folder the shared reader refuses as a CamInputError (same message)."""
    try:
        yield
    except RunFolderError as error:
        raise CamInputError(str(error)) from error


def run_identity(run_dir: str | Path) -> str:
    """A stable id for a run: ``run_id`` from run.json, else the folder name plus a predictions hash.

    The review database stores it so a database can never be silently used with another run.
    """
    run_dir = Path(run_dir)
    with _cam_input_errors():
        info = read_run_info(run_dir)
    if info.get("run_id"):
        return str(info["run_id"])
    predictions = run_dir / PREDICTIONS_TABLE
    if not predictions.exists():
        raise CamInputError(f"{predictions}: predictions table not found (has the cv/train stage run?)")
    digest = hashlib.sha256(predictions.read_bytes()).hexdigest()[:12]
    return f"{run_dir.resolve().name}-{digest}"


def read_run(run_dir: str | Path) -> RunInputs:
    """Read a run's test predictions and join them with the slice-cache rows; errors name files and ids."""
    with _cam_input_errors():
        folder = read_run_folder(run_dir)
        test = read_test_predictions(folder.predictions_table)
    index_path = folder.work / PREPROCESS_DIR / CACHE_INDEX
    if not index_path.exists():
        raise CamInputError(f"{index_path}: slice-cache index not found (work folder from {folder.run_info})")
    cache_index = read_cache_index(index_path)[["row", "subject_id"]]
    joined = test.merge(cache_index, on="subject_id", how="left")
    absent = joined.loc[joined["row"].isna(), "subject_id"].tolist()
    if absent:
        raise CamInputError(
            f"{index_path}: test subject(s) {absent[:10]} of {folder.predictions_table} have no cache row"
        )
    joined = joined.rename(columns={"row": "cache_row"})
    joined["cache_row"] = joined["cache_row"].astype(int)
    subjects = joined[["subject_id", "fold", "prob_right", "label", "cache_row"]]
    subjects = subjects.sort_values("subject_id").reset_index(drop=True)
    return RunInputs(folder.path, folder.info, folder.work, run_identity(folder.path), subjects)


def bundle_dir(run_dir: Path, fold: int) -> Path:
    """Where the bundle of one fold lives: ``RUN/fold_XX/bundle``."""
    return run_dir / f"fold_{fold:02d}" / "bundle"


def best_slice(knee_cams: np.ndarray) -> int:
    """The paper's rule: the slice whose CAM has the highest mean (first one on ties)."""
    return int(np.argmax(knee_cams.reshape(knee_cams.shape[0], -1).mean(axis=1)))


def default_loader() -> BundleLoader:
    """``kneepain.model.Bundle.load``, with a clear error when the model package is not available."""
    try:
        from kneepain.model import Bundle
    except ImportError as error:
        raise CamInputError(
            f"cannot load model bundles: kneepain.model is not importable ({error})"
        ) from error
    return Bundle.load


def compute_cams(
    run: RunInputs,
    loader: BundleLoader | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    precision: str = "auto",
) -> CamResult:
    """Run each fold's bundle over its test subjects' cache rows and collect the raw CAMs.

    ``loader(bundle_dir) -> Bundle`` defaults to ``kneepain.model.Bundle.load``; the bundle's input
    specification turns cache rows into the network's input, and its model must offer
    ``forward_with_cams(x) -> (logits, cams)`` with cams (B, 2, 23, h, w). ``precision`` (auto:
    bf16 where the device computes it natively, else fp32) is recorded in the meta.
    """
    import torch

    from kneepain.hardware import autocast_for, resolve_precision

    try:
        choice = resolve_precision(precision, torch.device(device))
    except ValueError as error:
        raise CamInputError(str(error)) from error
    load = loader or default_loader()
    cache_path = run.work / PREPROCESS_DIR / CACHE_ARRAY
    if not cache_path.exists():
        raise CamInputError(f"{cache_path}: slice cache not found")
    cache = open_cache(cache_path)
    too_far = run.subjects.loc[run.subjects["cache_row"] >= cache.shape[0], "subject_id"].tolist()
    if too_far:
        raise CamInputError(
            f"{cache_path}: has {cache.shape[0]} rows; subject(s) {too_far[:10]} point past it"
        )
    cams: np.ndarray | None = None
    bundles: dict[str, Any] = {}
    for fold, rows in run.subjects.groupby("fold", sort=True):
        path = bundle_dir(run.run_dir, int(fold))
        if not (path / BUNDLE_META).exists():
            raise CamInputError(f"{path}: bundle of fold {fold} not found ({BUNDLE_META} missing)")
        bundle = load(path)
        model = bundle.model.to(device).eval()
        bundles[str(int(fold))] = {
            "path": str(path),
            "input_size": bundle.input.size,
            "architecture": bundle.meta.get("architecture"),
        }
        positions = rows.index.to_numpy()
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            x = bundle.input.tensor(np.stack([cache[r] for r in run.subjects.loc[chunk, "cache_row"]]))
            with torch.inference_mode(), autocast_for(choice.precision, torch.device(device)):
                _, batch_cams = model.forward_with_cams(x.to(device))
            batch_cams = batch_cams.float().cpu().numpy()
            if batch_cams.ndim != 5 or batch_cams.shape[:3] != (len(chunk), 2, N_SLICES):
                raise CamInputError(
                    f"{path}: forward_with_cams returned shape {batch_cams.shape}, "
                    f"expected ({len(chunk)}, 2, {N_SLICES}, h, w)"
                )
            if cams is None:
                cams = np.zeros((len(run.subjects), *batch_cams.shape[1:]), dtype=np.float32)
            cams[chunk] = batch_cams
            if on_batch is not None:
                on_batch(len(chunk))
            kill_point("cam:batch")
    assert cams is not None  # read_run guarantees at least one test subject
    index = cam_index(run.subjects, cams)
    meta = {
        "run_id": run.run_id,
        "map_size": list(cams.shape[-2:]),
        "bundles": bundles,
        "backbone": _backbone_name(bundles),
        "precision": choice.to_json(),
        "package_version": __version__,
    }
    return CamResult(cams, index, meta)


def _backbone_name(bundles: dict[str, Any]) -> str:
    """The backbone named in the bundles' architecture record ('unknown' when none says)."""
    for entry in bundles.values():
        arch = entry.get("architecture")
        if isinstance(arch, dict):
            for key in ("backbone", "branch", "name"):
                if arch.get(key):
                    return str(arch[key])
        elif isinstance(arch, str) and arch:
            return arch
    return "unknown"


def cam_index(subjects: pd.DataFrame, cams: np.ndarray) -> pd.DataFrame:
    """The CAM index table: who each row of ``cams`` is, how it was predicted, and its best slice."""
    painful = np.where(subjects["label"].to_numpy() == LABEL_RIGHT_PAINFUL, 1, 0)
    predicted = np.where(subjects["prob_right"].to_numpy() >= 0.5, 1, 0)
    best = [best_slice(cams[i, painful[i]]) for i in range(len(subjects))]
    means = cams.mean(axis=(-2, -1))  # (N, 2, S)
    rows = np.arange(len(subjects))
    frame = subjects[["subject_id", "cache_row", "fold", "label", "prob_right"]].copy()
    frame["painful_side"] = [KNEES[k] for k in painful]
    frame["predicted_side"] = [KNEES[k] for k in predicted]
    frame["correct"] = painful == predicted
    frame["best_slice"] = best
    frame["cam_mean_painful"] = means[rows, painful, best]
    frame["cam_mean_other"] = means[rows, 1 - painful, best]
    return frame[CAM_INDEX_COLUMNS]


def write_cam_outputs(cam_dir: str | Path, result: CamResult) -> None:
    """Write ``cams.npy``, ``index.csv`` and ``meta.json`` into ``cam_dir`` (each file atomically)."""
    cam_dir = Path(cam_dir)
    if len(result.index) != result.cams.shape[0]:
        raise ValueError(f"CAM index has {len(result.index)} rows but the array has {result.cams.shape[0]}")
    with atomic_path(cam_dir / CAM_ARRAY) as tmp, tmp.open("wb") as handle:
        np.save(handle, result.cams.astype(np.float32))
    write_csv(cam_dir / CAM_INDEX, result.index)
    write_json(cam_dir / CAM_META, result.meta)


@dataclass
class CamOutputs:
    """A run's stored CAM outputs, opened read-only for overlays, localization and review."""

    run_dir: Path
    cams: np.ndarray
    index: pd.DataFrame
    meta: dict[str, Any]
    cache: np.ndarray


def read_cam_outputs(run_dir: str | Path, cam_dir: str | Path | None = None) -> CamOutputs:
    """Open ``RUN/cam`` (maps, index, meta) and the slice cache; a run without CAMs is a clear error.

    ``cam_dir`` reads the CAM files from elsewhere (the stage's temporary folder before it is swapped in).
    """
    run_dir = Path(run_dir)
    cam_dir = Path(cam_dir) if cam_dir is not None else run_dir / CAM_DIR
    for name in (CAM_ARRAY, CAM_INDEX, CAM_META):
        if not (cam_dir / name).exists():
            raise CamInputError(f"{cam_dir / name}: not found; run `kneepain cam {run_dir}` first")
    cams = np.load(cam_dir / CAM_ARRAY, mmap_mode="r")
    index = pd.read_csv(cam_dir / CAM_INDEX, dtype={"subject_id": str, "painful_side": str})
    missing = [c for c in CAM_INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise CamInputError(f"{cam_dir / CAM_INDEX}: lacks column(s) {missing}")
    if cams.ndim != 5 or cams.shape[0] != len(index) or cams.shape[1:3] != (2, N_SLICES):
        raise CamInputError(
            f"{cam_dir / CAM_ARRAY}: shape {cams.shape} does not match "
            f"{len(index)} index rows x 2 x {N_SLICES}"
        )
    meta = json.loads((cam_dir / CAM_META).read_text(encoding="utf-8"))
    with _cam_input_errors():
        work = run_work_folder(run_dir, read_run_info(run_dir))
    cache_path = work / PREPROCESS_DIR / CACHE_ARRAY
    if not cache_path.exists():
        raise CamInputError(f"{cache_path}: slice cache not found (work folder of {run_dir})")
    cache = open_cache(cache_path)
    if int(index["cache_row"].max()) >= cache.shape[0]:
        raise CamInputError(
            f"{cam_dir / CAM_INDEX}: cache rows point past {cache_path} ({cache.shape[0]} rows)"
        )
    return CamOutputs(run_dir, cams, index, meta, cache)
