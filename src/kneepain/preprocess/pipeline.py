"""The preprocess stage: every subject with both knee series, through a process pool, into the cache.

``run_preprocess(work)`` reads ``WORK/ingest/series.csv`` and ``cohort.csv``, builds (or reuses)
the registration templates, preprocesses each subject not finished yet into a part, and merges
the parts into the slice cache. ``shard=(i, n)`` processes every n-th subject starting at i and does
not merge; a later run without a shard (or ``merge_only``) joins them.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.console import progress, stage
from kneepain.contracts import KNEES, SERIES_COLUMNS, WorkPaths, read_cohort
from kneepain.preprocess import cache as cache_io
from kneepain.preprocess import quality
from kneepain.preprocess.centre_slice import centre_override, extent_centre, read_centre_overrides
from kneepain.preprocess.config import CacheMismatchError, PreprocessConfig, array_sha256, read_config
from kneepain.preprocess.knee import knee_info, preprocess_knee
from kneepain.preprocess.series_io import SeriesError, read_knee_series
from kneepain.preprocess.template import build_templates, window_on_grid


class PreprocessInputError(ValueError):
    """Input that stops the stage (missing table or column); the message names the file."""


def _as_bool(series: pd.Series) -> pd.Series:
    return series.astype(str).str.strip().str.lower().isin(["true", "1", "yes", "1.0"])


def load_inputs(work: Path) -> tuple[list[str], dict[tuple[str, str], str]]:
    """Sorted ids of subjects with both series, and (subject, side) -> series folder."""
    paths = WorkPaths(work)
    for needed in (paths.series_table, paths.cohort_table):
        if not needed.exists():
            raise PreprocessInputError(f"{needed}: not found; run `kneepain ingest` first")
    series = pd.read_csv(
        paths.series_table, dtype={"subject_id": str, "side": str, "path": str, "problem": str}
    )
    missing = [c for c in SERIES_COLUMNS if c not in series.columns]
    if missing:
        raise PreprocessInputError(f"{paths.series_table}: lacks column(s) {missing}")
    cohort = read_cohort(paths.cohort_table)
    both = cohort[_as_bool(cohort["has_left_series"]) & _as_bool(cohort["has_right_series"])]
    subjects = sorted(both["subject_id"].astype(str).unique())
    readable = series[series["problem"].fillna("") == ""].sort_values(["subject_id", "side", "visit"])
    folders = {
        (str(r.subject_id), str(r.side).strip().lower()): str(r.path)
        for r in readable.drop_duplicates(["subject_id", "side"]).itertuples(index=False)
    }
    return subjects, folders


# --- worker side ---------------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init_worker(
    config: PreprocessConfig, templates: np.ndarray | None, parts: str, centres: pd.DataFrame | None
) -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core: no nested thread pools
    _STATE.update(config=config, templates=templates, parts=Path(parts), centres=centres)


def _process_subject(task: tuple[str, str | None, str | None]) -> tuple[str, float, float]:
    """Preprocess one subject into its part; any failure becomes a QC reason, never a crash."""
    subject_id, left_dir, right_dir = task
    config: PreprocessConfig = _STATE["config"]
    start = time.perf_counter()
    results = []
    for side, folder in zip(KNEES, (left_dir, right_dir), strict=True):
        manual = centre_override(_STATE["centres"], subject_id, side)
        if folder is None:
            result = preprocess_knee(Path("/nonexistent"), side, config, None)
            result.qc.reasons = {"unreadable_series": "no readable series in series.csv"}
        else:
            try:
                result = preprocess_knee(folder, side, config, _STATE["templates"], manual)
            except Exception as error:  # one bad knee must not stop the cohort; reason goes on record
                result = preprocess_knee(Path("/nonexistent"), side, config, None)
                result.qc.reasons = {"unreadable_series": f"{folder}: processing failed ({error!r})"}
        results.append((result, folder, manual))
    pixels = np.stack([r.pixels for r, _, _ in results])
    knees = {
        r.side: knee_info(r) | {"series_path": folder or "", "manual_centre": manual}
        for r, folder, manual in results
    }
    cache_io.write_part(_STATE["parts"], subject_id, pixels, {"subject_id": subject_id, "knees": knees})
    return subject_id, time.perf_counter() - start, _own_peak_mb()


def _own_peak_mb() -> float:
    """Peak resident memory of this process in MB.

    Reads VmHWM from /proc (reset at exec, so a spawned worker reports its own peak); ru_maxrss
    elsewhere, which on Linux carries the parent's size over fork + exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- main side -------------------------------------------------------------------------------------
def _templates_for(
    work: Path, config: PreprocessConfig, subjects: list[str], folders: dict, centres: pd.DataFrame | None
) -> tuple[PreprocessConfig, np.ndarray | None]:
    """Reuse the stored templates when the parts were made with them, else build them from the cohort."""
    if not config.register:
        return config, None
    folder = cache_io.parts_dir(work)
    stored_config = folder / "config.json"
    template_path = WorkPaths(work).preprocess / cache_io.TEMPLATE_FILE
    if stored_config.exists():
        stored = read_config(stored_config)
        cache_io.check_same_config(
            stored, replace(config, template_sha256=stored.template_sha256), stored_config
        )
        try:
            templates = np.load(template_path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise CacheMismatchError(
                f"{template_path}: unreadable registration template ({error})"
            ) from error
        if array_sha256(templates) != stored.template_sha256:
            raise CacheMismatchError(
                f"{template_path}: does not match the template the cache was built with (hash differs); "
                f"delete {WorkPaths(work).preprocess} to rebuild"
            )
        return stored, templates
    knees = []
    for subject_id in subjects:
        if len(knees) >= 2 * config.template_subjects:
            break
        for side in KNEES:
            path = folders.get((subject_id, side))
            if path is None:
                continue
            try:
                volume = read_knee_series(path, side)
            except SeriesError:
                continue
            manual = centre_override(centres, subject_id, side)
            centre = volume.to_lateral_index(manual) if manual is not None else extent_centre(volume)
            # Keep only the window, on the 1 mm grid: memory stays ~1.5 MB per knee, not ~30 MB.
            knees.append(window_on_grid(volume, centre, config.half_slices, config.template_field_mm + 48))
    if not knees:
        raise PreprocessInputError(
            f"{WorkPaths(work).series_table}: no readable series to build a template from"
        )
    templates, _ = build_templates(knees, config.half_slices, config.template_field_mm)
    cache_io.save_template(work, templates)
    return replace(config, template_sha256=array_sha256(templates)), templates


def _finished(
    folder: Path, subjects: list[str], config: PreprocessConfig, centres: pd.DataFrame | None
) -> set[str]:
    """Subjects whose part exists, reads back, and used the manual centres asked for now."""
    done = cache_io.finished_subjects(folder, subjects, config.image_size)
    if centres is None or not len(centres):
        return done
    for subject_id in sorted(done & set(centres["subject_id"])):
        _, record = cache_io.read_part(folder / f"{subject_id}.npz", config.image_size)
        for side in KNEES:
            if record["knees"][side].get("manual_centre") != centre_override(centres, subject_id, side):
                done.discard(subject_id)
    return done


def run_preprocess(
    work: Path,
    *,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    register: bool = True,
    centre_csv: Path | None = None,
    qc_override_csv: Path | None = None,
    merge_only: bool = False,
    config: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Run the preprocess stage on a work folder; returns counts and timings.

    Raises PreprocessInputError for missing inputs and CacheMismatchError for a cache built with
    another configuration (or corrupt); earlier output is never half-overwritten.
    """
    work = Path(work)
    config = config or PreprocessConfig(register=register)
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {shard[0]}/{shard[1]}")
    centres = read_centre_overrides(centre_csv) if centre_csv else None
    overrides = quality.read_qc_overrides(qc_override_csv) if qc_override_csv else None
    summary: dict[str, Any] = {}
    with stage("preprocess") as info:
        subjects, folders = load_inputs(work)
        mine = subjects if shard is None else subjects[shard[0] :: shard[1]]
        template_start = time.perf_counter()
        config, templates = _templates_for(work, config, subjects, folders, centres)
        summary["template_seconds"] = round(time.perf_counter() - template_start, 2)
        parts = cache_io.claim_parts(work, config)
        todo = [] if merge_only else sorted(set(mine) - _finished(parts, mine, config, centres))
        start = time.perf_counter()
        if todo:
            tasks = [(s, folders.get((s, "left")), folders.get((s, "right"))) for s in todo]
            n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
            initargs = (config, templates, str(parts), centres)
            worker_peak = 0.0
            if n_workers == 1:
                _init_worker(*initargs)
                for task in progress(tasks, "preprocess"):
                    worker_peak = max(worker_peak, _process_subject(task)[2])
            else:
                # spawn, not fork: the parent has used OpenCV's thread pool (template), and a forked
                # child inheriting that pool's locks can hang forever.
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(
                    n_workers, mp_context=context, initializer=_init_worker, initargs=initargs
                ) as pool:
                    for _, _, peak in progress(
                        pool.map(_process_subject, tasks, chunksize=1), "preprocess", total=len(tasks)
                    ):
                        worker_peak = max(worker_peak, peak)
            summary["peak_rss_worker_mb"] = round(worker_peak, 1)
        seconds = time.perf_counter() - start
        summary.update(
            subjects=len(mine), processed=len(todo), skipped=len(mine) - len(todo), seconds=round(seconds, 2)
        )
        summary["peak_rss_main_mb"] = round(_own_peak_mb(), 1)
        summary["knees_per_s"] = round(2 * len(todo) / seconds, 2) if todo and seconds > 0 else None
        if shard is None:
            merged = cache_io.merge_parts(work, subjects, config, overrides)
            summary.update(merged)
        info.update(
            {k: v for k, v in summary.items() if k in ("subjects", "processed", "skipped", "qc_pass")}
        )
        if summary.get("knees_per_s"):
            info["knees/s"] = summary["knees_per_s"]
    return summary
