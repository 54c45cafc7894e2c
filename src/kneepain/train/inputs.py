"""What a training run reads from the work folder: the training table, the slice cache and its
fingerprint, each checked against the others, and the errors that say why a run cannot start."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.contracts import WorkPaths, open_cache, training_table
from kneepain.protocol import summarize_acquisition

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
