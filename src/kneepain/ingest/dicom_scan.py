"""Find the SAG_IW_TSE series of one visit in an OAI image tree and read their DICOM headers.

The visit folder (``00m``) is searched for at any depth, because real unpacks are sometimes
nested. Series are found from the index CSV when there is one, otherwise from the first readable
header of every series folder. Each chosen series then has every slice header read (never the
pixel data) in a process pool, and is summarised as one row of the series table with any
problem found (unreadable or truncated file, missing or duplicated slice, non-sagittal plane,
inconsistent pixel spacing, duplicated series).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom  # imported here, not in the workers: forked pool processes inherit it ready to use
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from kneepain.console import progress
from kneepain.contracts import SERIES_COLUMNS
from kneepain.ingest import IngestError
from kneepain.preprocess.series_io import DicomLimits, SeriesError, read_header
from kneepain.workers import die_with_parent, kill_point

INDEX_COLUMNS = ("Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription")
SERIES_NAME = "SAG_IW_TSE"
_SERIES_PATTERN = re.compile(rf"^\s*{SERIES_NAME}_(LEFT|RIGHT)\s*$", re.IGNORECASE)
_SUBJECT_PATTERN = re.compile(r"^\d{7}$")
# Tags read from every slice; everything else is skipped, and pixel data is never read.
_HEADER_TAGS = [
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "BitsAllocated",
    "SamplesPerPixel",
    "NumberOfFrames",
]
_NUMBER_TAGS = {
    keyword: tag_for_keyword(keyword)
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "PixelSpacing",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "InstanceNumber",
        "SliceThickness",
        "NumberOfFrames",
    )
}
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_SPACING_TOLERANCE_MM = 1e-3
_ORIENTATION_TOLERANCE = 1e-3
_GAP_FACTOR = 1.5  # a step between slice positions this many times the usual one means a lost slice


@dataclass(frozen=True)
class SeriesCandidate:
    """A series folder chosen for reading: whose, which knee, where."""

    subject_id: str
    side: str
    path: Path


def series_side(description: str | None) -> str | None:
    """Return ``left``/``right`` for a SAG_IW_TSE series description (any case), else None."""
    if not description:
        return None
    match = _SERIES_PATTERN.match(str(description))
    return match.group(1).lower() if match else None


def find_visit_dirs(images_root: Path, visit: str = "00m") -> list[Path]:
    """Every innermost folder named ``visit`` (case-insensitive) under ``images_root``.

    A nested unpack (``00m/00m/...``) yields only the inner folder. Raises IngestError when
    there is none.
    """
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise IngestError(f"{images_root}: image root is not a folder")
    found: list[Path] = []
    if images_root.name.lower() == visit.lower():
        found.append(images_root)
    for folder, subdirs, _files in os.walk(images_root):
        found.extend(Path(folder) / d for d in subdirs if d.lower() == visit.lower())
    innermost = [p for p in found if not any(q != p and p in q.parents for q in found)]
    if not innermost:
        raise IngestError(f"{images_root}: no visit folder named {visit!r} found at any depth")
    return sorted(innermost)


def find_index_csv(visit_dir: Path) -> Path | None:
    """A CSV in the visit folder (or the folder above) whose header is the OAI index header."""
    for folder in (visit_dir, visit_dir.parent):
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() == ".csv":
                with open(path, encoding="latin-1", newline="") as handle:
                    header = handle.readline()
                names = {name.strip().strip('"') for name in header.split(",")}
                if {"Folder", "SeriesDescription"} <= names:
                    return path
    return None


def series_from_index(index_csv: Path, visit_dir: Path) -> list[SeriesCandidate]:
    """The SAG_IW_TSE series listed in an index CSV, with folders resolved inside ``visit_dir``."""
    try:
        table = pd.read_csv(index_csv, dtype=str, keep_default_na=False, encoding="latin-1")
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise IngestError(f"{index_csv}: cannot read the index CSV ({error})") from error
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("Folder", "ParticipantID", "SeriesDescription") if c not in table.columns]
    if missing:
        raise IngestError(
            f"{index_csv}: index CSV lacks column(s) {missing}; expected the columns {list(INDEX_COLUMNS)}"
        )
    candidates = []
    for row in table.itertuples(index=False):
        side = series_side(row.SeriesDescription)
        if side is None:
            continue
        folder = str(row.Folder).strip().replace("\\", "/")
        candidates.append(SeriesCandidate(str(row.ParticipantID).strip(), side, visit_dir / folder))
    return candidates


def _subject_from_path(series_dir: Path, root: Path) -> str | None:
    """The 7-digit participant id nearest above a series folder (OAI: cohort/ID/date/series)."""
    for part in reversed(series_dir.relative_to(root).parts[:-1]):
        if _SUBJECT_PATTERN.match(part):
            return part
    return None


def _slice_files(series_dir: Path) -> list[Path]:
    """Plain files of a series folder (OAI slice files have no extension; hidden files skipped)."""
    return sorted(p for p in series_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def _classify_folder(series_dir: Path) -> tuple[str | None, str | None]:
    """(SeriesDescription, PatientID) from the first readable header of a folder; (None, None) if none."""
    for path in _slice_files(series_dir):
        try:
            header = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SeriesDescription", "PatientID"]
            )
        except Exception:  # any unreadable file: try the next one, the full scan reports it
            continue
        description = header.get("SeriesDescription")
        if description is not None:
            return str(description), str(header.get("PatientID", "")) or None
    return None, None


def series_from_headers(visit_dir: Path, workers: int | None = None) -> list[SeriesCandidate]:
    """The SAG_IW_TSE series of a visit folder found by reading one header per folder (no index)."""
    folders = [
        Path(folder)
        for folder, subdirs, files in os.walk(visit_dir)
        if files and not subdirs and any(not f.startswith(".") for f in files)
    ]
    folders.sort()
    classified = _map(_classify_folder, folders, workers, "classifying series folders")
    candidates = []
    for folder, (description, patient_id) in zip(folders, classified, strict=True):
        side = series_side(description)
        if side is None:
            continue
        subject = _subject_from_path(folder, visit_dir) or patient_id
        if subject:
            candidates.append(SeriesCandidate(subject, side, folder))
    return candidates


def _numbers(header: pydicom.Dataset, keyword: str) -> list[float]:
    """Values of a DS/IS element parsed straight from its raw bytes.

    Hand-written because pydicom's DS conversion (validation, DSfloat objects) costs about as
    much as reading the header itself, and header speed is what limits a whole-cohort scan.
    """
    element = header.get_item(_NUMBER_TAGS[keyword])
    if element is None:
        raise KeyError(f"no {keyword}")
    value = element.value
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip(" \x00")
        if not text:
            raise ValueError(f"{keyword} is empty")
        return [float(v) for v in text.split("\\")]
    if value is None:
        raise ValueError(f"{keyword} is empty")
    return [float(v) for v in (value if isinstance(value, list | tuple | MultiValue) else [value])]


def _unsigned(header: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    """A US element's value from its raw bytes (same reason as ``_numbers``)."""
    element = header.get_item(_NUMBER_TAGS[keyword])
    if element is None or element.value is None or element.value == b"":
        if default is None:
            raise KeyError(f"no {keyword}")
        return default
    value = element.value
    if isinstance(value, bytes):
        little = header.original_encoding[1] is not False
        return int.from_bytes(value[:2], "little" if little else "big")
    return int(value)


def _optional_number(header: pydicom.Dataset, keyword: str) -> float:
    try:
        return _numbers(header, keyword)[0]
    except (KeyError, ValueError):
        return float("nan")


def _read_slice(path: Path, limits: DicomLimits | None = None) -> dict[str, object]:
    """Header fields of one slice, or {'error': ...}; checks the pixel data is all there and that
    the image it declares is within ``limits`` (default: from the environment)."""
    limits = limits or DicomLimits.from_environment()
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            deflated = _DEFLATED.encode() in handle.read(4096)  # named in the (never deflated) file meta
            if not deflated:
                handle.seek(0)
                header = pydicom.dcmread(handle, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
                pixel_start: int | None = handle.tell()
        if deflated:  # the header from a bounded inflation; whether the data is whole is not known
            header, pixel_start = read_header(path, specific_tags=_HEADER_TAGS), None
    except Exception as error:  # pydicom raises many types for damaged files; all mean unreadable
        return {"error": f"{path}: unreadable DICOM ({type(error).__name__}: {error})"}
    try:
        rows, columns = _unsigned(header, "Rows"), _unsigned(header, "Columns")
        spacing = tuple(_numbers(header, "PixelSpacing"))
        orientation = tuple(_numbers(header, "ImageOrientationPatient"))
        position = tuple(_numbers(header, "ImagePositionPatient"))
        instance = int(_numbers(header, "InstanceNumber")[0])
        if len(spacing) != 2 or len(orientation) != 6 or len(position) != 3:
            raise ValueError(
                "PixelSpacing, ImageOrientationPatient or ImagePositionPatient has the wrong length"
            )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        return {"error": f"{path}: DICOM header lacks a needed tag or value ({error})"}
    try:
        frames = int(_numbers(header, "NumberOfFrames")[0])
    except (KeyError, ValueError):
        frames = 1
    try:
        declared = limits.check_size(
            path,
            rows,
            columns,
            frames,
            _unsigned(header, "SamplesPerPixel", 1),
            _unsigned(header, "BitsAllocated", 16),
        )
    except SeriesError as error:
        return {"error": str(error)}
    # A file cut short after its header still parses with stop_before_pixels, so compare the bytes
    # left with the pixel data the header promises (uncompressed data only; 12 bytes of element header).
    expected = (
        rows * columns * _unsigned(header, "SamplesPerPixel", 1) * _unsigned(header, "BitsAllocated", 16) // 8
    )
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    compressed = bool(syntax is not None and syntax.is_compressed)
    if pixel_start is not None and not compressed and size - pixel_start < expected + 8:
        return {
            "error": f"{path}: truncated file ({max(size - pixel_start, 0)} bytes of pixel data, "
            f"{expected} expected)"
        }
    return {
        "file": str(path),
        "rows": rows,
        "columns": columns,
        "spacing": spacing,
        "orientation": orientation,
        "position": position,
        "instance": instance,
        "thickness": _optional_number(header, "SliceThickness"),
        "bytes": declared,
    }


def plane_of(orientation: Sequence[float]) -> str:
    """``sagittal``, ``coronal`` or ``axial`` from ImageOrientationPatient (the slice normal's axis)."""
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, column)
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def summarise_series(candidate: SeriesCandidate, visit: str) -> dict[str, object]:
    """One series-table row: read every slice header of the series and list what is wrong."""
    row: dict[str, object] = {
        "subject_id": candidate.subject_id,
        "side": candidate.side,
        "visit": visit,
        "path": str(candidate.path.resolve()),
        "n_slices": 0,
        "rows": None,
        "columns": None,
        "pixel_spacing_row_mm": None,
        "pixel_spacing_col_mm": None,
        "slice_thickness_mm": None,
        "orientation": "",
        "problem": "",
    }
    if not candidate.path.is_dir():
        row["problem"] = f"{candidate.path}: series folder does not exist"
        return row
    files = _slice_files(candidate.path)
    if not files:
        row["problem"] = f"{candidate.path}: series folder has no slice files"
        return row
    slices = [_read_slice(path) for path in files]
    problems = [s["error"] for s in slices if "error" in s]
    good = [s for s in slices if "error" not in s]
    row["n_slices"] = len(files)
    if not good:
        row["problem"] = "; ".join(problems)
        return row
    try:
        DicomLimits.from_environment().check_series(candidate.path, sum(int(s["bytes"]) for s in good))
    except SeriesError as error:
        problems.append(str(error))
    first = good[0]
    row.update(
        rows=first["rows"],
        columns=first["columns"],
        pixel_spacing_row_mm=first["spacing"][0],
        pixel_spacing_col_mm=first["spacing"][1],
        slice_thickness_mm=first["thickness"],
        orientation=plane_of(first["orientation"]),
    )
    # With unreadable files, instance numbers are unknown, so gap checks would only repeat the problem.
    problems.extend(_consistency_problems(good, candidate, check_gaps=not problems))
    row["problem"] = "; ".join(problems)
    return row


def _consistency_problems(
    slices: list[dict], candidate: SeriesCandidate, check_gaps: bool = True
) -> list[str]:
    """Problems across the slices of one series: plane, spacing, size, duplicates and gaps."""
    problems = []
    first = slices[0]
    plane = plane_of(first["orientation"])
    if plane != "sagittal":
        problems.append(f"{candidate.path}: labelled sagittal but the slices are {plane}")
    for s in slices[1:]:
        if np.max(np.abs(np.subtract(s["spacing"], first["spacing"]))) > _SPACING_TOLERANCE_MM:
            here = "\\".join(f"{v:g}" for v in s["spacing"])
            there = "\\".join(f"{v:g}" for v in first["spacing"])
            problems.append(
                f"{s['file']}: inconsistent pixel spacing within series "
                f"({here} mm, {first['file']} has {there})"
            )
            break
    for s in slices[1:]:
        if (s["rows"], s["columns"]) != (first["rows"], first["columns"]):
            problems.append(f"{s['file']}: image size {s['rows']}x{s['columns']} differs within series")
            break
    for s in slices[1:]:
        if np.max(np.abs(np.subtract(s["orientation"], first["orientation"]))) > _ORIENTATION_TOLERANCE:
            problems.append(f"{s['file']}: slice orientation differs within series")
            break
    instances = sorted(s["instance"] for s in slices)
    duplicated = sorted({n for n in instances if instances.count(n) > 1})
    if duplicated:
        problems.append(f"{candidate.path}: duplicated slice instance number(s) {duplicated}")
    if check_gaps:
        problems.extend(_gap_problems(slices, candidate))
    return problems


def _gap_problems(slices: list[dict], candidate: SeriesCandidate) -> list[str]:
    """A missing slice shows as an instance-number gap or a step twice the usual slice distance."""
    ordered = sorted(slices, key=lambda s: s["instance"])
    instances = [s["instance"] for s in ordered]
    missing = sorted(set(range(min(1, instances[0]), instances[-1] + 1)) - set(instances))
    if missing:
        return [f"{candidate.path}: missing slice(s), instance number(s) {missing} absent"]
    if len(ordered) < 3:
        return []
    normal = np.cross(np.asarray(ordered[0]["orientation"][:3]), np.asarray(ordered[0]["orientation"][3:6]))
    positions = np.array([np.dot(normal, s["position"]) for s in ordered])
    steps = np.abs(np.diff(positions))
    usual = float(np.median(steps))
    if usual > 0 and np.any(steps > _GAP_FACTOR * usual):
        where = int(np.argmax(steps > _GAP_FACTOR * usual))
        return [
            f"{candidate.path}: missing slice between instance {instances[where]} and "
            f"{instances[where + 1]} ({steps[where]:.2f} mm apart, usually {usual:.2f} mm)"
        ]
    return []


def _map(function, items: Sequence, workers: int | None, description: str) -> list:
    """Apply ``function`` to every item, in a process pool when ``workers`` > 1, with a progress bar."""
    workers = (os.cpu_count() or 1) if workers is None else max(1, workers)
    if workers == 1 or len(items) < 2:
        return [_passed(r) for r in progress(map(function, items), description, total=len(items))]
    chunk = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(
        max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        results = pool.map(function, items, chunksize=chunk)
        return [_passed(r) for r in progress(results, description, total=len(items))]


def _passed(result: object) -> object:
    """One result collected (the fault-injection tests kill the stage here, mid-pool)."""
    kill_point("ingest:headers")
    return result


def _summarise_task(args: tuple[SeriesCandidate, str]) -> dict[str, object]:
    return summarise_series(*args)


def mark_duplicates(table: pd.DataFrame) -> pd.DataFrame:
    """Give every series of a subject and side that has more than one series a 'duplicated' problem."""
    table = table.copy()
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for position, (subject, side) in enumerate(zip(table["subject_id"], table["side"], strict=True)):
        groups[(subject, side)].append(position)
    for (_subject, side), positions in groups.items():
        if len(positions) < 2:
            continue
        paths = [str(table["path"].iloc[p]) for p in positions]
        note = f"duplicated {SERIES_NAME}_{side.upper()} series: {', '.join(paths)}"
        for p in positions:
            old = table["problem"].iloc[p]
            table.iloc[p, table.columns.get_loc("problem")] = f"{old}; {note}" if old else note
    return table


def scan_series(
    images_root: Path,
    *,
    visit: str = "00m",
    index_csv: Path | None = None,
    workers: int | None = None,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Build the series table (contracts.SERIES_COLUMNS) for one visit of an image tree.

    Returns the table sorted by subject and side, and facts for the log (visit folders, index
    used, headers read).
    """
    visit_dirs = find_visit_dirs(Path(images_root), visit)
    candidates: list[SeriesCandidate] = []
    used_index: list[str] = []
    if index_csv is not None:
        index_csv = Path(index_csv)
        if not index_csv.is_file():
            raise IngestError(f"{index_csv}: index CSV does not exist")
        if len(visit_dirs) > 1:
            raise IngestError(
                f"{images_root}: an index CSV was given but there are {len(visit_dirs)} {visit!r} folders "
                f"({', '.join(str(v) for v in visit_dirs)}); point --images at the one it describes"
            )
    for visit_dir in visit_dirs:
        index = index_csv if index_csv is not None else find_index_csv(visit_dir)
        if index is not None:
            candidates.extend(series_from_index(index, visit_dir))
            used_index.append(str(index))
        else:
            candidates.extend(series_from_headers(visit_dir, workers))
    rows = _map(_summarise_task, [(c, visit) for c in candidates], workers, "reading series headers")
    table = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    table = mark_duplicates(table)
    table = table.sort_values(["subject_id", "side", "path"], kind="stable").reset_index(drop=True)
    facts = {
        "visit_dirs": [str(v) for v in visit_dirs],
        "index": used_index,
        "series": len(table),
        "headers": int(table["n_slices"].sum()),
    }
    return table, facts
