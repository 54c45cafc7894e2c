"""The preprocess stage: every subject with both knee series, through a process pool, into the cache.

``run_preprocess(work)`` reads ``WORK/ingest/series.csv`` and ``cohort.csv``, builds (or reuses)
the registration templates, preprocesses each subject not finished yet into a part, and merges
the parts into the slice cache. ``shard=(i, n)`` processes every n-th subject starting at i and does
not merge; a later run without a shard (or ``merge_only``) joins them.

The templates are built once per work folder (in the same process pool as the subjects) and
stored as ``WORK/preprocess/template.npy``; re-runs and every shard read that file instead of
building their own (``template_only`` builds it and stops; ``template=FILE`` takes another
cohort's). The summary reports wall and CPU seconds (per knee, and for the template), the
latter being what to compare on a shared machine.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kneepain.console import console, progress, safe, stage
from kneepain.contracts import KNEES, SERIES_COLUMNS, WorkPaths, name_subjects, read_cohort
from kneepain.fileio import remove_stale_temporaries
from kneepain.preprocess import cache as cache_io
from kneepain.preprocess import quality
from kneepain.preprocess.centre_slice import centre_override, extent_centre, read_centre_overrides
from kneepain.preprocess.config import CacheMismatchError, PreprocessConfig, array_sha256, read_config
from kneepain.preprocess.knee import knee_info, preprocess_knee
from kneepain.preprocess.protocol_check import bundle_acquisition, check_protocol
from kneepain.preprocess.qc_audit import audit_warnings, write_qc_audit
from kneepain.preprocess.registration import MOVING_MARGIN_MM
from kneepain.preprocess.series_io import SeriesError, read_knee_series
from kneepain.preprocess.template import TemplateKnee, build_templates, frame_pose, window_on_grid
from kneepain.workers import die_with_parent, kill_point

TEMPLATE_SEARCH = 2  # slices either side of a template knee's centre guess searched each round


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
    try:
        series = pd.read_csv(
            paths.series_table, dtype={"subject_id": str, "side": str, "path": str, "problem": str}
        )
        cohort = read_cohort(paths.cohort_table)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise PreprocessInputError(
            f"{paths.ingest}: series.csv or cohort.csv is not a readable table ({error}); "
            "run `kneepain ingest` again"
        ) from error
    missing = [c for c in SERIES_COLUMNS if c not in series.columns]
    if missing:
        raise PreprocessInputError(f"{paths.series_table}: lacks column(s) {missing}")
    both = cohort[_as_bool(cohort["has_left_series"]) & _as_bool(cohort["has_right_series"])]
    subjects = sorted(both["subject_id"].astype(str).unique())
    readable = series[series["problem"].fillna("") == ""].sort_values(["subject_id", "side", "visit"])
    folders = {
        (str(r.subject_id), str(r.side).strip().lower()): str(r.path)
        for r in readable.drop_duplicates(["subject_id", "side"]).itertuples(index=False)
    }
    return subjects, folders


def _folder_listing(folder: str) -> list[list[Any]]:
    """(name, bytes, mtime ns) of a series folder's plain files: what a re-download or a fix changes."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        return [["unreadable folder", type(error).__name__]]
    listing = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_file():
            continue
        stat = entry.stat()
        listing.append([entry.name, stat.st_size, stat.st_mtime_ns])
    return listing


def input_fingerprints(
    work: Path, subjects: list[str], config: PreprocessConfig, centres: pd.DataFrame | None
) -> dict[str, str]:
    """Per subject, a hash of exactly what its part is made from.

    That is the subject's rows of series.csv (side, visit, geometry, whether it has a problem),
    the name, size and modification time of every file in those series folders, the manual
    centre slices asked for, and the preprocessing configuration (template hash included). A part
    whose stored hash differs is recomputed: a mended file, a replaced series, a new centre. The
    folder's path is not part of it: the same files moved or copied with their times (``cp -a``,
    ``rsync -a``) are the same input, and the merge takes the paths from the current series.csv.
    """
    series = pd.read_csv(WorkPaths(work).series_table, dtype=str, keep_default_na=False)
    described = [c for c in SERIES_COLUMNS if c not in ("path", "problem")]
    series["has_problem"] = series["problem"].str.strip() != ""
    rows = {
        subject: frame.sort_values(["side", "visit", "path"])[
            [*described, "has_problem", "path"]
        ].values.tolist()
        for subject, frame in series.groupby("subject_id", sort=False)
    }
    settings = config.fingerprint()
    prints = {}
    for subject_id in subjects:
        mine = rows.get(subject_id, [])
        record = {
            "config": settings,
            "series": [row[:-1] for row in mine],
            "files": [_folder_listing(row[-1]) for row in mine],
            "centres": [centre_override(centres, subject_id, side) for side in KNEES],
        }
        prints[subject_id] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return prints


# --- worker side ---------------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init_worker(
    parts: str, centres: pd.DataFrame | None, template_path: str, parent: int | None = None
) -> None:
    if parent is not None:
        die_with_parent(parent)  # a pool worker: end with the main process, even on kill -9
    import cv2

    cv2.setNumThreads(1)  # one process per core: no nested thread pools
    _STATE.update(parts=Path(parts), centres=centres, template_path=Path(template_path), templates={})


def _worker_templates(config: PreprocessConfig) -> np.ndarray | None:
    """The templates ``config`` pins, read once per worker from the work folder (hash checked)."""
    if not config.register:
        return None
    cached = _STATE["templates"].get(config.template_sha256)
    if cached is None:
        cached = cache_io.read_template(_STATE["template_path"])
        if array_sha256(cached) != config.template_sha256:
            raise CacheMismatchError(f"{_STATE['template_path']}: changed while the stage was running")
        _STATE["templates"] = {config.template_sha256: cached}
    return cached


def _process_subject(
    task: tuple[str, str | None, str | None, PreprocessConfig, str],
) -> tuple[str, float, float]:
    """Preprocess one subject into its part (recording its input hash); any failure becomes a QC
    reason, never a crash."""
    subject_id, left_dir, right_dir, config, inputs_sha256 = task
    templates = _worker_templates(config)
    start = time.perf_counter()
    results = []
    for side, folder in zip(KNEES, (left_dir, right_dir), strict=True):
        manual = centre_override(_STATE["centres"], subject_id, side)
        if folder is None:
            result = preprocess_knee(Path("/nonexistent"), side, config, None)
            result.qc.reasons = {"unreadable_series": "no readable series in series.csv"}
        else:
            try:
                result = preprocess_knee(folder, side, config, templates, manual)
            except Exception as error:  # one bad knee must not stop the cohort; reason goes on record
                result = preprocess_knee(Path("/nonexistent"), side, config, None)
                result.qc.reasons = {"unreadable_series": f"{folder}: processing failed ({error!r})"}
        results.append((result, folder, manual))
    pixels = np.stack([r.pixels for r, _, _ in results])
    knees = {
        r.side: knee_info(r) | {"series_path": folder or "", "manual_centre": manual}
        for r, folder, manual in results
    }
    record = {"subject_id": subject_id, "knees": knees, "inputs_sha256": inputs_sha256}
    cache_io.write_part(_STATE["parts"], subject_id, pixels, record)
    return subject_id, time.perf_counter() - start, _own_peak_mb()


def _template_window(task: tuple[str, str, int | None, int, int]) -> TemplateKnee | None:
    """Read one template knee and keep its slice window on the 1 mm grid (None: unreadable)."""
    path, side, manual, half, field_px = task
    try:
        volume = read_knee_series(path, side)
        centre = volume.to_lateral_index(manual) if manual is not None else extent_centre(volume)
    except SeriesError:
        return None
    # Keep only the window, on the 1 mm grid: memory stays ~2 MB per knee, not ~30 MB.
    return window_on_grid(volume, centre, half, field_px)


def _timed_call(call: tuple[Callable[[Any], Any], Any]) -> tuple[Any, float]:
    """``function(task)`` and the CPU seconds it took in this process (insensitive to other load)."""
    function, task = call
    start = time.process_time()
    result = function(task)
    return result, time.process_time() - start


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


class _Workers:
    """The stage's processes: a spawn pool started on first use (template or subjects), or the
    calling process itself for one worker.

    spawn, not fork: the parent uses OpenCV's thread pool, and a forked child inheriting that
    pool's locks can hang forever.
    """

    def __init__(self, count: int, initargs: tuple[Any, ...]) -> None:
        self.count, self.initargs = max(1, count), initargs
        self._pool: ProcessPoolExecutor | None = None
        self.cpu_seconds = 0.0  # CPU time the tasks took, summed over processes

    def map(self, function: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Results of ``function`` over ``tasks``, in order; their CPU time adds to ``cpu_seconds``."""
        timed = ((function, task) for task in tasks)
        if self.count == 1:
            _init_worker(*self.initargs)
            results = map(_timed_call, timed)
        else:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")
                self._pool = ProcessPoolExecutor(
                    self.count,
                    mp_context=context,
                    initializer=_init_worker,
                    initargs=(*self.initargs, os.getpid()),
                )
            results = self._pool.map(_timed_call, timed, chunksize=1)
        for result, cpu_seconds in results:
            self.cpu_seconds += cpu_seconds
            yield result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


# --- main side -------------------------------------------------------------------------------------
def _template_record(config: PreprocessConfig) -> dict[str, Any]:
    """The configuration keys a stored template depends on (checked when one is reused)."""
    return {
        "half_slices": config.half_slices,
        "template_field_mm": config.template_field_mm,
        "template_subjects": config.template_subjects,
        "registration_motion": config.registration_motion,
        "template_frame": config.template_frame,
        # Configurations 3-7 resampled anatomical templates into their frame; from 8 they stay in the
        # group's frame and the frame is applied after registration (config.frame_pose).
        "resampled_into_frame": config.template_frame == "anatomical" and config.version < 8,
    }


def _check_template_record(path: Path, config: PreprocessConfig) -> None:
    """Refuse a stored template built with other settings than ``config`` (keys named)."""
    record_path = path.with_name(cache_io.TEMPLATE_RECORD)
    if not record_path.exists():
        return
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CacheMismatchError(f"{record_path}: unreadable template record ({error})") from error
    if record.get("source", "built") != "built":
        return  # a template given with --template: only its shape is checked
    wanted = _template_record(config)
    record.setdefault("template_frame", "group_mean")  # records from before the anatomical frame
    record.setdefault("resampled_into_frame", record["template_frame"] == "anatomical")  # before 8
    differing = sorted(k for k, v in wanted.items() if k in record and record[k] != v)
    if differing:
        raise CacheMismatchError(
            f"{path}: stored template was built with other settings (differs in {differing}); "
            f"delete it (and {cache_io.parts_dir(path.parent.parent)}) to rebuild"
        )


def _template_inputs(
    config: PreprocessConfig, subjects: list[str], folders: dict, centres: pd.DataFrame | None
) -> str:
    """Hash of the files the template is built from (the first ``template_subjects`` subjects)."""
    chosen = []
    for subject_id in subjects[: config.template_subjects]:
        for side in KNEES:
            path = folders.get((subject_id, side))
            if path is not None:
                chosen.append(
                    [subject_id, side, _folder_listing(path), centre_override(centres, subject_id, side)]
                )
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def _warn_if_template_inputs_changed(
    path: Path, config: PreprocessConfig, subjects: list[str], folders: dict, centres: pd.DataFrame | None
) -> None:
    """Say so when the stored template was built from files that have changed since.

    The template is kept (every part and any trained model depends on its hash); the user
    decides whether to rebuild it.
    """
    try:
        record = json.loads(path.with_name(cache_io.TEMPLATE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    stored = record.get("inputs_sha256") if record.get("source") == "built" else None
    if stored and stored != _template_inputs(config, subjects, folders, centres):
        console.print(
            f"[yellow]preprocess: {safe(path)} was built from series files that changed since; it is kept "
            f"(every part depends on it): delete {safe(path.parent)} to rebuild it from the current files"
        )


def _build_templates(
    work: Path,
    config: PreprocessConfig,
    subjects: list[str],
    folders: dict,
    centres: pd.DataFrame | None,
    workers: _Workers,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Unbiased templates from the first ``template_subjects`` subjects' knees, read in parallel."""
    tasks = []
    for subject_id in subjects[: config.template_subjects]:
        for side in KNEES:
            path = folders.get((subject_id, side))
            if path is not None:
                manual = centre_override(centres, subject_id, side)
                field = config.template_field_mm + 2 * MOVING_MARGIN_MM
                tasks.append((path, side, manual, config.half_slices + TEMPLATE_SEARCH, field))
    knees = [k for k in workers.map(_template_window, tasks) if k is not None]
    if not knees:
        raise PreprocessInputError(
            f"{WorkPaths(work).series_table}: no readable series to build a template from"
        )
    templates, history, frame = build_templates(
        knees,
        config.half_slices,
        config.template_field_mm,
        core_half=config.knee_pose_half,
        search=TEMPLATE_SEARCH,
        motion=config.registration_motion,
        frame=config.template_frame,
        map_function=workers.map,
    )
    record = _template_record(config) | {"source": "built", "knees": len(knees), "rounds": history}
    record["inputs_sha256"] = _template_inputs(config, subjects, folders, centres)
    if frame is not None:
        record["anatomical_frame"] = frame.record()
    return templates, record


def _frame_status(work: Path) -> str | None:
    """The template's frame in words from template.json: "anatomical (tibial landmarks)", or the
    fallback and why (the landmarks were not found), or None without a record."""
    path = WorkPaths(work).preprocess / "template.json"
    try:
        frame = json.loads(path.read_text(encoding="utf-8")).get("anatomical_frame")
    except (OSError, ValueError):
        return None
    if not frame:
        return None
    status = str(frame.get("status", ""))
    if status.startswith("fallback") or frame.get("reason"):
        return f"fallback: group mean frame kept ({frame.get('reason', 'landmarks not found')})"
    return "anatomical (tibial landmarks)"


def _templates_for(
    work: Path,
    config: PreprocessConfig,
    subjects: list[str],
    folders: dict,
    centres: pd.DataFrame | None,
    workers: _Workers,
    template_file: Path | None = None,
) -> tuple[PreprocessConfig, np.ndarray | None]:
    """The registration templates: those the parts were made with, a stored or given file, or
    built from the cohort (then stored, so later runs and other shards reuse them)."""
    if not config.register:
        if template_file is not None:
            raise ValueError("--template has no use with --no-register")
        return config, None
    paths = WorkPaths(work)
    template_path = paths.preprocess / cache_io.TEMPLATE_FILE
    stored_config = cache_io.parts_dir(work) / "config.json"
    if template_path.exists():
        _warn_if_template_inputs_changed(template_path, config, subjects, folders, centres)
    given = (
        cache_io.read_template(Path(template_file), config.half_slices, config.template_field_mm)
        if template_file is not None
        else None
    )
    if stored_config.exists():
        stored = read_config(stored_config)
        cache_io.check_same_config(
            stored,
            replace(config, template_sha256=stored.template_sha256, frame_pose=stored.frame_pose),
            stored_config,
        )
        if given is not None and array_sha256(given) != stored.template_sha256:
            raise CacheMismatchError(
                f"{template_file}: not the template the parts in {stored_config.parent} were made with "
                f"(hash differs); use another work folder or delete {paths.preprocess} to rebuild"
            )
        templates = cache_io.read_template(template_path)
        if array_sha256(templates) != stored.template_sha256:
            raise CacheMismatchError(
                f"{template_path}: does not match the template the cache was built with (hash differs); "
                f"delete {paths.preprocess} to rebuild"
            )
        return stored, templates
    if given is not None:
        record = _template_record(config) | {"source": str(Path(template_file).resolve())}
        templates = cache_io.store_template_once(work, given, record)
        if array_sha256(templates) != array_sha256(given):
            raise CacheMismatchError(
                f"{template_path}: the work folder already holds another template than {template_file}; "
                f"delete {paths.preprocess} to use the given one"
            )
    elif template_path.exists():
        templates = cache_io.read_template(template_path, config.half_slices, config.template_field_mm)
        _check_template_record(template_path, config)
    else:
        built, record = _build_templates(work, config, subjects, folders, centres, workers)
        templates = cache_io.store_template_once(work, built, record)
    return (
        replace(
            config,
            template_sha256=array_sha256(templates),
            frame_pose=frame_pose(templates, config.template_frame)
            if config.version >= 8
            else (0.0, 0.0, 0.0),
        ),
        templates,
    )


def _finished(folder: Path, subjects: list[str], image_size: int, prints: dict[str, str]) -> dict[str, str]:
    """Why each subject's part cannot be reused: ``new``, ``inputs changed`` or ``corrupt part``.

    Subjects missing from the result have a whole part made from exactly their current inputs
    (``prints``); a corrupt part is deleted so it is redone.
    """
    redo = {}
    for subject_id in subjects:
        path = folder / f"{subject_id}.npz"
        if not path.exists():
            redo[subject_id] = "new"
            continue
        try:
            _, record = cache_io.read_part(path, image_size)
        except CacheMismatchError:
            path.unlink()
            redo[subject_id] = "corrupt part"
            continue
        if record.get("inputs_sha256") != prints[subject_id]:
            redo[subject_id] = "inputs changed"
    return redo


def _report_recomputed(redo: dict[str, str]) -> dict[str, int]:
    """Say, one line per reason, which existing parts are recomputed and why; return the counts."""
    counts: dict[str, int] = {}
    for reason in ("inputs changed", "corrupt part"):
        ids = sorted(s for s, why in redo.items() if why == reason)
        if ids:
            counts[reason] = len(ids)
            console.print(f"preprocess: recomputed {len(ids)}: {reason} ({safe(name_subjects(ids))})")
    return counts


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
    template: Path | None = None,
    template_only: bool = False,
    bundle: Path | None = None,
) -> dict[str, Any]:
    """Run the preprocess stage on a work folder; returns counts and timings.

    ``template`` reuses a stored template file (e.g. another cohort's ``template.npy``) instead of
    building one; ``template_only`` builds (or checks) the work folder's template and stops, so
    shards launched afterwards share it. Raises PreprocessInputError for missing inputs and
    CacheMismatchError for a cache built with another configuration or template (or corrupt);
    earlier output is never half-overwritten. ``bundle`` (a model bundle) is the reference of the
    protocol check (else the cohort's own median; protocol_check.py).
    """
    work = Path(work)
    if bundle is not None:
        bundle_acquisition(Path(bundle))  # refuse an unreadable bundle before any work
    config = config or PreprocessConfig(register=register)
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {shard[0]}/{shard[1]}")
    centres = read_centre_overrides(centre_csv) if centre_csv else None
    overrides = quality.read_qc_overrides(qc_override_csv) if qc_override_csv else None
    summary: dict[str, Any] = {}
    with stage("preprocess") as info:
        step_start = time.perf_counter()
        subjects, folders = load_inputs(work)
        remove_stale_temporaries(WorkPaths(work).preprocess, recursive=True)
        kill_point("preprocess:start")
        mine = subjects if shard is None else subjects[shard[0] :: shard[1]]
        count = max(1, min(workers or os.cpu_count() or 1, len(mine) or 1))
        template_path = WorkPaths(work).preprocess / cache_io.TEMPLATE_FILE
        pool = _Workers(count, (str(cache_io.parts_dir(work)), centres, str(template_path)))
        try:
            template_start, template_cpu = time.perf_counter(), time.process_time()
            config, _ = _templates_for(work, config, subjects, folders, centres, pool, template)
            frame_line = _frame_status(work) if config.register else None
            if frame_line:
                summary["template_frame"] = frame_line
            summary["template_seconds"] = round(time.perf_counter() - template_start, 2)
            main_cpu = time.process_time() - template_cpu  # includes the tasks when run in-process
            summary["template_cpu_seconds"] = round(main_cpu + (pool.cpu_seconds if pool.count > 1 else 0), 2)
            if template_only:
                summary["template_sha256"] = config.template_sha256
                info.update(template=str(template_path) if config.register else "none (--no-register)")
                return summary
            kill_point("preprocess:template")
            parts = cache_io.claim_parts(work, config)
            prints = input_fingerprints(work, mine, config, centres)
            redo = _finished(parts, mine, config.image_size, prints)
            if merge_only and redo:
                stale = sorted(redo)
                raise CacheMismatchError(
                    f"{parts}: {len(stale)} subject(s) have no part made from their current inputs "
                    f"({name_subjects(stale)}: {redo[stale[0]]}); run preprocess without --merge-only "
                    "(or every shard) first"
                )
            todo = sorted(redo)
            summary["recomputed"] = sum(_report_recomputed(redo).values())
            start, subjects_cpu = time.perf_counter(), pool.cpu_seconds
            if todo:
                tasks = [
                    (s, folders.get((s, "left")), folders.get((s, "right")), config, prints[s]) for s in todo
                ]
                worker_peak = 0.0
                for _, _, peak in progress(pool.map(_process_subject, tasks), "preprocess", total=len(tasks)):
                    worker_peak = max(worker_peak, peak)
                    kill_point("preprocess:subject")
                summary["peak_rss_worker_mb"] = round(worker_peak, 1)
                summary["cpu_seconds_per_knee"] = round(
                    (pool.cpu_seconds - subjects_cpu) / (2 * len(todo)), 3
                )
            seconds = time.perf_counter() - start
        finally:
            pool.close()
        summary.update(
            subjects=len(mine), processed=len(todo), skipped=len(mine) - len(todo), seconds=round(seconds, 2)
        )
        summary["knees_per_s"] = round(2 * len(todo) / seconds, 2) if todo and seconds > 0 else None
        kill_point("preprocess:parts_done")
        if shard is None:
            merge_start = time.perf_counter()
            summary.update(cache_io.merge_parts(work, subjects, config, overrides, series_paths=folders))
            summary["merge_seconds"] = round(time.perf_counter() - merge_start, 2)
            warnings = audit_warnings(write_qc_audit(work))
            summary["qc_label_dependent"] = len(warnings)
            for line in warnings:
                console.print(f"[bold red]warning:[/bold red] {safe(line)}")
            knees = [
                (s, side, folders[(s, side)]) for s in subjects for side in KNEES if (s, side) in folders
            ]
            _, protocol_lines = check_protocol(work, knees, Path(bundle) if bundle else None)
            summary["protocol_mismatch"] = len(protocol_lines)
            for line in protocol_lines:
                console.print(f"[bold yellow]warning:[/bold yellow] {safe(line)}")
            if str(summary.get("template_frame", "")).startswith("fallback"):
                console.print(
                    f"[bold yellow]warning:[/bold yellow] template frame {safe(summary['template_frame'])}"
                )
        summary["peak_rss_main_mb"] = round(_own_peak_mb(), 1)
        summary["step_seconds"] = round(time.perf_counter() - step_start, 2)
        if todo:  # the whole step: template, pool start, subjects and merge
            summary["knees_per_s_step"] = round(2 * len(todo) / summary["step_seconds"], 2)
        info.update(
            {
                k: v
                for k, v in summary.items()
                if k
                in (
                    "subjects",
                    "processed",
                    "recomputed",
                    "skipped",
                    "qc_pass",
                    "qc_label_dependent",
                    "protocol_mismatch",
                    "template_frame",
                )
            }
        )
        if summary.get("knees_per_s"):
            info["knees/s"] = summary["knees_per_s"]
    return summary
