"""DICOM headers/s: ingest's header reader against plain pydicom, on the same files.

``scan_series`` is the reader ``kneepain ingest`` uses (only the needed tags, numbers parsed from
their raw bytes, pixel data never read, a truncation check); the baseline reads each header with
``pydicom.dcmread(stop_before_pixels=True)`` and takes the same values through pydicom's usual
attribute access. A first untimed pass warms the page cache, so both read from memory.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from kneepain.bench.report import OK
from kneepain.bench.workspace import Workspace
from kneepain.hardware import usable_cores


def slice_files(series_dirs: list[Path]) -> list[Path]:
    """Every slice file (no extension, not hidden) of the given series folders."""
    return [p for d in series_dirs for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")]


def pydicom_headers(files: list[Path]) -> int:
    """Read the headers the plain way and touch the values ingest needs; returns the count."""
    import pydicom

    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        _ = (
            int(header.Rows),
            int(header.Columns),
            [float(v) for v in header.PixelSpacing],
            [float(v) for v in header.ImageOrientationPatient],
            [float(v) for v in header.ImagePositionPatient],
            int(header.InstanceNumber),
            float(header.SliceThickness),
        )
    return len(files)


def _scan(images: Path, workers: int) -> int:
    from kneepain.ingest.dicom_scan import scan_series

    _, facts = scan_series(images, workers=workers)
    return int(facts["headers"])


def measure_headers(space: Workspace, rounds: int) -> dict[str, Any]:
    """Headers/s of ``scan_series`` with 1 and all workers and of the pydicom baseline."""
    images = space.ensure_cohort() / "images"
    files = slice_files([Path(p) for p in space.series()["path"]])
    cores = space.workers or usable_cores()
    readers = {"scan_series, 1 worker": lambda: _scan(images, 1)}
    if cores > 1:
        readers[f"scan_series, {cores} workers"] = lambda: _scan(images, cores)
    readers["pydicom.dcmread, all tags (baseline)"] = lambda: pydicom_headers(files)
    _scan(images, 1)  # warm the page cache
    rates: dict[str, list[float]] = {name: [] for name in readers}
    counts: dict[str, int] = {}
    for _ in range(max(1, rounds)):
        for name, read in readers.items():
            start = time.perf_counter()
            counts[name] = read()
            rates[name].append(counts[name] / (time.perf_counter() - start))
    baseline = statistics.median(rates["pydicom.dcmread, all tags (baseline)"])
    rows = [
        {
            "name": name,
            "headers": counts[name],
            "headers_per_s": statistics.median(values),
            "vs_pydicom": statistics.median(values) / baseline,
            "status": OK,
        }
        for name, values in rates.items()
    ]
    return {"series": len(space.series()), "rounds": max(1, rounds), "rows": rows}
