"""The slice cache on disk: per-subject parts (resume, shards) merged into one memory-mapped array.

Layout inside ``WORK/preprocess/``:
- ``parts/config.json``: the configuration every part was written with (checked before reuse).
- ``parts/<subject_id>.npz``: one subject's pixels (2, 23, 224, 224) uint8 and a JSON record with
  its index, QC and registration rows. Written atomically, so a part exists whole or not at all,
  and a re-run (or another shard) skips subjects whose part is there.
- after the merge: ``cache.npy`` (open_memmap), ``index.csv``, ``qc.csv``, ``registration.csv``,
  ``config.json`` (docs/contracts.md, "preprocess").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain import fileio
from kneepain.contracts import (
    CACHE_DTYPE,
    CACHE_INDEX_COLUMNS,
    KNEES,
    N_SLICES,
    QC_REPORT,
    REGISTRATION_TABLE,
    WorkPaths,
)
from kneepain.preprocess.config import CacheMismatchError, PreprocessConfig, read_config
from kneepain.preprocess.quality import FLAGS, override_for
from kneepain.workers import kill_point

PARTS_DIR = "parts"
TEMPLATE_FILE = "template.npy"
TEMPLATE_RECORD = "template.json"  # how the template was made (informative; the hash pins it)


def parts_dir(work: Path) -> Path:
    """Folder of the per-subject parts."""
    return WorkPaths(work).preprocess / PARTS_DIR


def claim_parts(work: Path, config: PreprocessConfig) -> Path:
    """Make sure the parts folder belongs to ``config``: create it, or refuse one from another config."""
    folder = parts_dir(work)
    stored = folder / "config.json"
    if stored.exists():
        check_same_config(read_config(stored), config, stored)
    else:
        fileio.write_json(stored, config.to_json())
    return folder


def check_same_config(stored: PreprocessConfig, wanted: PreprocessConfig, where: Path) -> None:
    """Raise CacheMismatchError naming the differing keys when two configurations differ."""
    a, b = stored.fingerprint(), wanted.fingerprint()
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise CacheMismatchError(
            f"{where}: cache was written with another preprocessing configuration (differs in {keys}); "
            f"re-run with the same options or delete {where.parent} to rebuild"
        )


def write_part(folder: Path, subject_id: str, pixels: np.ndarray, record: dict[str, Any]) -> Path:
    """Write one subject's part atomically."""
    if pixels.ndim != 4 or pixels.shape[:2] != (2, N_SLICES):
        raise ValueError(
            f"subject {subject_id}: pixels have shape {pixels.shape}, expected (2, {N_SLICES}, h, w)"
        )
    target = folder / f"{subject_id}.npz"
    with fileio.atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, pixels=pixels.astype(CACHE_DTYPE), record=np.array(json.dumps(record)))
    return target


def read_part(path: Path, image_size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a part; raise CacheMismatchError naming the file when it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            pixels = data["pixels"]
            record = json.loads(str(data["record"]))
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise CacheMismatchError(f"{path}: corrupt cache part ({error})") from error
    expected = (2, N_SLICES, image_size, image_size)
    if pixels.shape != expected or pixels.dtype != CACHE_DTYPE:
        raise CacheMismatchError(
            f"{path}: cache part has {pixels.shape} {pixels.dtype}, expected {expected} uint8"
        )
    return pixels, record


def finished_subjects(folder: Path, subject_ids: Sequence[str], image_size: int) -> set[str]:
    """Subjects whose part exists and reads back whole (a corrupt part is redone, not reused)."""
    done = set()
    for subject_id in subject_ids:
        path = folder / f"{subject_id}.npz"
        if not path.exists():
            continue
        try:
            read_part(path, image_size)
        except CacheMismatchError:
            path.unlink()
            continue
        done.add(subject_id)
    return done


def subject_tables(
    record: dict[str, Any], overrides: pd.DataFrame | None
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """One subject's index row, QC rows and registration rows, with manual QC decisions applied.

    Overrides are applied here (at merge), so changing the manual list needs no recomputation.
    """
    subject_id = record["subject_id"]
    index: dict[str, Any] = {"subject_id": subject_id}
    qc_rows, registration_rows = [], []
    reasons = []
    for side in KNEES:
        knee = record["knees"][side]
        auto_pass, auto_reason = bool(knee["qc_pass"]), str(knee["qc_reason"])
        decision = override_for(overrides, subject_id, side)
        qc_pass, reason = auto_pass, auto_reason
        if decision is not None:
            qc_pass = decision[0]
            reason = f"manual {'pass' if qc_pass else 'fail'}: {decision[1]}".rstrip(": ")
        if not qc_pass:
            reasons.append(f"{side}: {reason}")
        index[f"centre_{side}"] = knee["centre_slice"]
        index[f"qc_pass_{side}"] = qc_pass
        index[f"intensity_scale_{side}"] = knee["intensity_scale"]
        qc_rows.append(
            {
                "subject_id": subject_id,
                "side": side,
                "series_path": knee.get("series_path", ""),
                "n_slices": knee["n_slices"],
                "centre_slice": knee["centre_slice"],
                "centre_method": knee["centre_method"],
                **{flag: flag in knee["flags"] for flag in FLAGS},
                "auto_pass": auto_pass,
                "auto_reason": auto_reason,
                "manual": "" if decision is None else ("pass" if decision[0] else "fail"),
                "qc_pass": qc_pass,
                "qc_reason": "" if qc_pass else reason,
            }
        )
        registration_rows.extend(
            {"subject_id": subject_id, "side": side, **row} for row in knee["registration"]
        )
    index["qc_pass"] = not reasons
    index["qc_reason"] = "; ".join(reasons)
    return index, qc_rows, registration_rows


def merge_parts(
    work: Path,
    subject_ids: Sequence[str],
    config: PreprocessConfig,
    overrides: pd.DataFrame | None = None,
    series_paths: dict[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """Join the parts of ``subject_ids`` (sorted) into cache.npy and the tables, atomically.

    Streams one part at a time into the memory map, so memory does not grow with the cohort.
    ``series_paths`` ((subject, side) -> folder, from the current series.csv) replaces the paths
    the parts recorded, so qc.csv names where the series are now. Refuses when a part is missing
    (a shard not run yet) or corrupt.
    """
    from numpy.lib.format import open_memmap

    folder = parts_dir(work)
    check_same_config(read_config(folder / "config.json"), config, folder / "config.json")
    subject_ids = sorted(subject_ids)
    missing = [s for s in subject_ids if not (folder / f"{s}.npz").exists()]
    if missing:
        raise CacheMismatchError(
            f"{folder}: {len(missing)} subject(s) not processed yet (e.g. {missing[:3]}); "
            "run every shard before merging"
        )
    paths = WorkPaths(work)
    size = config.image_size
    index_rows, qc_rows, registration_rows = [], [], []
    content = hashlib.sha256()  # of every row's pixels and record: a rebuilt cache is noticed downstream
    with fileio.atomic_path(paths.cache_array) as tmp:
        # open_memmap writes the .npy header and sizes the file; the rows are then written through
        # a plain file handle, since pages written through a memory map stay in this process's
        # resident memory and would make it grow with the cohort.
        cache = open_memmap(
            tmp, mode="w+", dtype=CACHE_DTYPE, shape=(len(subject_ids), 2, N_SLICES, size, size)
        )
        data_offset, row_bytes = cache.offset, cache[0].nbytes if len(subject_ids) else 0
        del cache
        with open(tmp, "r+b") as handle:
            for row, subject_id in enumerate(subject_ids):
                pixels, record = read_part(folder / f"{subject_id}.npz", size)
                handle.seek(data_offset + row * row_bytes)
                data = np.ascontiguousarray(pixels, dtype=CACHE_DTYPE).tobytes()
                handle.write(data)
                content.update(data)
                kill_point("preprocess:merge")
                if series_paths is not None:
                    for side in KNEES:
                        record["knees"][side]["series_path"] = series_paths.get((subject_id, side), "")
                index, qc, registration = subject_tables(record, overrides)
                content.update(json.dumps(index, sort_keys=True, default=str).encode())
                index_rows.append({"row": row, **index})
                qc_rows.extend(qc)
                registration_rows.extend(registration)
    index = pd.DataFrame(index_rows)
    ordered = CACHE_INDEX_COLUMNS + [c for c in index.columns if c not in CACHE_INDEX_COLUMNS]
    fileio.write_csv(paths.cache_index, index[ordered] if len(index) else pd.DataFrame(columns=ordered))
    fileio.write_csv(paths.preprocess / QC_REPORT, pd.DataFrame(qc_rows))
    fileio.write_csv(paths.preprocess / REGISTRATION_TABLE, pd.DataFrame(registration_rows))
    kill_point("preprocess:tables")
    stored = config.to_json() | {"subjects": len(subject_ids), "content_sha256": content.hexdigest()}
    fileio.write_json(paths.cache_config, stored)
    return {"subjects": len(subject_ids), "qc_pass": int(index["qc_pass"].sum()) if len(index) else 0}


def check_cache(work: Path, config: PreprocessConfig | None = None) -> PreprocessConfig:
    """Verify a merged cache: config readable (and equal to ``config`` if given), array and index agree.

    Raises CacheMismatchError with the file and the reason; returns the stored configuration.
    """
    from kneepain.contracts import open_cache, read_cache_index

    paths = WorkPaths(work)
    for needed in (paths.cache_config, paths.cache_array, paths.cache_index):
        if not needed.exists():
            raise CacheMismatchError(f"{needed}: missing; run `kneepain preprocess {work}`")
    stored = read_config(paths.cache_config)
    if config is not None:
        check_same_config(stored, config, paths.cache_config)
    try:
        cache = open_cache(paths.cache_array)
        index = read_cache_index(paths.cache_index)
    except ValueError as error:
        raise CacheMismatchError(f"corrupt slice cache: {error}") from error
    if cache.shape[0] != len(index) or list(index["row"]) != list(range(len(index))):
        raise CacheMismatchError(
            f"{paths.cache_array}: {cache.shape[0]} rows but {paths.cache_index} lists {len(index)}; "
            "the cache is corrupt, re-run preprocess"
        )
    if cache.shape[-1] != stored.image_size:
        raise CacheMismatchError(
            f"{paths.cache_array}: image size {cache.shape[-1]} != config {stored.image_size}"
        )
    return stored


def store_template_once(work: Path, templates: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """Store the templates unless the work folder already holds some, and return the stored ones.

    Shards started together may each build the (identical) templates; the first to finish
    publishes its file (a hard link is created only if the name is free, atomically) and every
    shard then uses that file, so all parts share one template hash. ``record`` (how the
    templates were made) goes to ``template.json`` beside it.
    """
    target = WorkPaths(Path(work)).preprocess / TEMPLATE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a name of this process first (with the usual file mode), then linked.
    staged = target.with_name(f".{TEMPLATE_FILE}.{fileio.owner_tag()}.staged")
    try:
        with fileio.atomic_path(staged) as tmp, open(tmp, "wb") as handle:
            np.save(handle, templates.astype(np.float32))
        try:
            os.link(staged, target)
            published = True
        except FileExistsError:
            published = False
    finally:
        staged.unlink(missing_ok=True)
    if published:
        fileio.write_json(target.with_name(TEMPLATE_RECORD), record)
    return read_template(target)


def read_template(path: Path, half: int | None = None, field: int | None = None) -> np.ndarray:
    """Read a template file (2 half + 1, field, field) float32; CacheMismatchError names the file
    and says what is wrong when it is unreadable, of another shape, or not finite."""
    try:
        templates = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise CacheMismatchError(f"{path}: unreadable registration template ({error})") from error
    expected = None if half is None or field is None else (2 * half + 1, field, field)
    if templates.ndim != 3 or templates.shape[1] != templates.shape[2] or templates.shape[0] % 2 != 1:
        raise CacheMismatchError(
            f"{path}: a registration template is (slices, field, field), got shape {templates.shape}"
        )
    if expected is not None and templates.shape != expected:
        raise CacheMismatchError(
            f"{path}: template shape {templates.shape} does not fit this configuration (expected "
            f"{expected}: half_slices {half}, template_field_mm {field})"
        )
    if not np.issubdtype(templates.dtype, np.floating) or not np.isfinite(templates).all():
        raise CacheMismatchError(f"{path}: registration template must hold finite floating-point values")
    return templates.astype(np.float32, copy=False)


def load_templates(work: Path) -> tuple[PreprocessConfig, np.ndarray | None]:
    """The merged cache's configuration and registration templates (hash checked), for predict.

    ``preprocess_pair(left, right, config, templates=templates)`` then reproduces the cache's input.
    Templates are None for a ``--no-register`` cache.
    """
    from kneepain.preprocess.config import array_sha256

    paths = WorkPaths(Path(work))
    config = read_config(paths.cache_config)
    if not config.register:
        return config, None
    path = paths.preprocess / TEMPLATE_FILE
    templates = read_template(path)
    if array_sha256(templates) != config.template_sha256:
        raise CacheMismatchError(
            f"{path}: not the template {paths.cache_config} was built with (hash differs)"
        )
    return config, templates
