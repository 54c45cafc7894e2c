"""Read one knee's sagittal DICOM series into a volume whose slice index +k points lateral.

DICOM patient coordinates are LPS: x grows toward the patient's left. A sagittal series has its
slice normal along x, so slices are ordered by ImagePositionPatient projected on that axis (never by
InstanceNumber, whose direction differs between scanners). For a left knee lateral is +x, for a
right knee lateral is -x, so the right knee's order is reversed. In-plane, rows are turned to run
superior -> inferior and columns anterior -> posterior, so every knee is seen the same way.

Limits: a damaged or hostile file can declare an image far larger than any MR slice (Rows and
Columns of 65535 ask for 8 GiB; a deflated file of 0.5 MiB can inflate to 512 MiB). Every file's
size is therefore checked from its header before any pixel is decoded (:class:`DicomLimits`:
pixels per slice and stored bytes per series, defaults below, raised with the environment
variables ``KNEEPAIN_MAX_SLICE_PIXELS`` and ``KNEEPAIN_MAX_SERIES_MB`` or the commands'
``--max-slice-pixels`` / ``--max-series-mb``), a deflated file's header is read by inflating at
most ``DEFLATED_HEADER_BYTES`` of it, and pixel data is read one file at a time.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAX_SLICE_PIXELS = 4096 * 4096  # default: 16.8 M pixels per slice (an MR slice is ~0.2 M)
MAX_SERIES_MB = 1024.0  # default: stored pixel bytes of one series (an OAI SAG_IW_TSE: ~15 MB)
SLICE_PIXELS_ENV = "KNEEPAIN_MAX_SLICE_PIXELS"
SERIES_MB_ENV = "KNEEPAIN_MAX_SERIES_MB"
DEFLATED_HEADER_BYTES = 1 << 20  # a deflated file's header must lie within its first MiB, inflated
_PIXEL_DATA_TAG = 0x7FE00010


class SeriesError(ValueError):
    """A series that cannot be read as one sagittal knee volume; the message names the folder."""


@dataclass(frozen=True)
class DicomLimits:
    """Largest image a file may declare, checked from headers before any pixel is decoded."""

    max_slice_pixels: int = MAX_SLICE_PIXELS  # Rows x Columns x NumberOfFrames of one file
    max_series_mb: float = MAX_SERIES_MB  # stored pixel bytes summed over a series' files

    @classmethod
    def from_environment(cls) -> DicomLimits:
        """The limits set by ``KNEEPAIN_MAX_SLICE_PIXELS`` / ``KNEEPAIN_MAX_SERIES_MB`` (else defaults).

        Environment variables, so that pool workers started by a command inherit the command's
        options; an unusable value is refused naming the variable.
        """
        values: dict[str, Any] = {}
        for name, key, kind in (
            (SLICE_PIXELS_ENV, "max_slice_pixels", int),
            (SERIES_MB_ENV, "max_series_mb", float),
        ):
            text = os.environ.get(name, "").strip()
            if text:
                try:
                    values[key] = kind(text)
                except ValueError:
                    raise SeriesError(f"environment variable {name}={text!r}: expected a number") from None
                if values[key] <= 0:
                    raise SeriesError(f"environment variable {name}={text!r}: must be positive")
        return cls(**values)

    @staticmethod
    def set_for_this_run(max_slice_pixels: int | None, max_series_mb: float | None) -> None:
        """Apply a command's options to this process and every worker it starts (environment)."""
        if max_slice_pixels is not None:
            os.environ[SLICE_PIXELS_ENV] = str(int(max_slice_pixels))
        if max_series_mb is not None:
            os.environ[SERIES_MB_ENV] = str(float(max_series_mb))

    def check_slice(self, path: Path, header: Any) -> int:
        """Raise SeriesError naming ``path`` when its header declares too large an image; return its bytes."""
        try:
            rows, columns = int(header.Rows), int(header.Columns)
            frames = int(getattr(header, "NumberOfFrames", 1) or 1)
            samples = int(getattr(header, "SamplesPerPixel", 1) or 1)
            bits = int(getattr(header, "BitsAllocated", 16) or 16)
        except (AttributeError, TypeError, ValueError) as error:
            raise SeriesError(f"{path}: DICOM header lacks Rows/Columns ({error})") from error
        return self.check_size(path, rows, columns, frames, samples, bits)

    def check_size(self, path: Path, rows: int, columns: int, frames: int, samples: int, bits: int) -> int:
        """As :meth:`check_slice`, from the header's numbers."""
        pixels = rows * columns * frames * samples
        if pixels > self.max_slice_pixels:
            raise SeriesError(
                f"{path}: declares {rows} x {columns} pixels x {frames} frame(s) x {samples} sample(s), "
                f"more than the limit of {self.max_slice_pixels} per file; a damaged file? "
                f"(raise the limit with --max-slice-pixels or {SLICE_PIXELS_ENV})"
            )
        return pixels * max(1, bits // 8)

    def check_series(self, folder: Path, total_bytes: int) -> None:
        """Raise SeriesError naming ``folder`` when its files' pixel data together exceed the limit."""
        if total_bytes > self.max_series_mb * 2**20:
            raise SeriesError(
                f"{folder}: its files declare {total_bytes / 2**20:.0f} MB of pixel data, more than the "
                f"limit of {self.max_series_mb:g} MB per series "
                f"(raise the limit with --max-series-mb or {SERIES_MB_ENV})"
            )


def _is_deflated(path: Path) -> Any:
    """The file meta group when ``path`` uses the deflated transfer syntax, else None (cheap check)."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as handle:
        head = handle.read(4096)  # the file meta group (never deflated) names the transfer syntax
    if DeflatedExplicitVRLittleEndian.encode() not in head:
        return None
    meta = pydicom.filereader.read_file_meta_info(path)
    return meta if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian else None


def _read_deflated(path: Path, meta: Any, most: int, header_only: bool) -> Any:
    """Parse a deflated file, inflating at most ``most`` bytes (a larger stream is refused)."""
    import pydicom

    with open(path, "rb") as handle:
        preamble = handle.read(132)
        start = 132 if preamble[128:132] == b"DICM" else 0
        start += 12 + int(meta.get("FileMetaInformationGroupLength", 0))  # group length element + group
        handle.seek(start)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        chunks, size = [], 0
        try:
            while size < most and (block := handle.read(1 << 20)):
                chunks.append(inflater.decompress(block, most - size))
                size += len(chunks[-1])
                if inflater.unconsumed_tail and size >= most:
                    break
        except zlib.error as error:
            raise SeriesError(f"{path}: damaged deflated DICOM data ({error})") from error
        if not header_only and (inflater.unconsumed_tail or handle.read(1)) and size >= most:
            raise SeriesError(f"{path}: deflated data inflates past the {most} bytes its header declares")
    stop = (lambda tag, vr, length: tag >= _PIXEL_DATA_TAG) if header_only else None
    try:
        dataset = pydicom.filereader.read_dataset(
            io.BytesIO(b"".join(chunks)), is_implicit_VR=False, is_little_endian=True, stop_when=stop
        )
    except Exception as error:  # cut short by the bound, or damaged: pydicom raises many types
        raise SeriesError(f"{path}: deflated DICOM data unreadable ({error})") from error
    dataset.file_meta = meta
    return dataset


def read_header(path: str | Path, specific_tags: list[str] | None = None) -> Any:
    """A DICOM file's header without its pixel data, never inflating more than its first MiB.

    pydicom inflates a whole deflated file before parsing it; here the header of such a file is
    parsed from a bounded inflation instead. Raises pydicom's InvalidDicomError for non-DICOM
    files and SeriesError (naming the file) for a deflated header that is damaged or too long.
    """
    import pydicom

    path = Path(path)
    meta = _is_deflated(path)
    if meta is None:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=specific_tags)
    return _read_deflated(path, meta, DEFLATED_HEADER_BYTES, header_only=True)


def read_checked(path: Path, limits: DicomLimits) -> tuple[Any, int]:
    """A whole DICOM file, read only after its header passed ``limits``; and its declared pixel bytes.

    An uncompressed file holds at most its own size, so it is read in one parse and checked
    before any pixel is decoded; a deflated file is checked from its bounded header first and
    then inflated no further than it declares.
    """
    import pydicom

    meta = _is_deflated(path)
    if meta is None:
        dataset = pydicom.dcmread(path)
        return dataset, limits.check_slice(path, dataset)
    declared = limits.check_slice(path, _read_deflated(path, meta, DEFLATED_HEADER_BYTES, header_only=True))
    return _read_deflated(path, meta, declared + DEFLATED_HEADER_BYTES, header_only=False), declared


@dataclass
class KneeVolume:
    """One knee series: voxels (slices, rows, cols) float32, slice 0 most medial, +k lateral."""

    voxels: np.ndarray
    spacing_row_mm: float
    spacing_col_mm: float
    slice_positions_mm: np.ndarray  # position of each slice along the lateral axis (mm)
    series_index: np.ndarray  # each slice's 0-based index in the series sorted by InstanceNumber
    side: str
    path: Path

    @property
    def n_slices(self) -> int:
        return int(self.voxels.shape[0])

    def to_lateral_index(self, series_index: int) -> int:
        """Index in this (lateral-ordered) volume of the slice at ``series_index`` in InstanceNumber order."""
        hits = np.flatnonzero(self.series_index == series_index)
        if hits.size == 0:
            raise SeriesError(f"{self.path}: no slice with series index {series_index}")
        return int(hits[0])


def read_knee_series(folder: str | Path, side: str, limits: DicomLimits | None = None) -> KneeVolume:
    """Read every DICOM file in ``folder`` (no extensions assumed) as one knee, lateral = +k.

    Headers are read and checked against ``limits`` (default: from the environment) first; pixel
    data is then decoded one file at a time into the volume. Raises SeriesError naming the folder
    or the file when it holds no DICOM slices, mixed sizes, is not sagittal, declares too large an
    image, or holds a file whose pixel data cannot be read (truncated, say).
    """
    import pydicom

    folder = Path(folder)
    limits = limits or DicomLimits.from_environment()
    if side not in ("left", "right"):
        raise SeriesError(f"{folder}: side must be 'left' or 'right', got {side!r}")
    if not folder.is_dir():
        raise SeriesError(f"{folder}: series folder does not exist")
    datasets, slices = [], []
    total_bytes = 0
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset, size = read_checked(file, limits)
        except pydicom.errors.InvalidDicomError:
            continue  # a stray non-DICOM file (e.g. a listing) is not part of the series
        except SeriesError:
            raise
        except Exception as error:  # pydicom raises many types for a damaged file
            raise SeriesError(
                f"{file}: unreadable DICOM ({type(error).__name__}: {error}); replace the file"
            ) from error
        total_bytes += size
        limits.check_series(folder, total_bytes)
        try:  # decoded now, one file at a time: only this slice's pixels are ever decoded at once
            slices.append(_pixels(dataset))
        except Exception as error:  # truncated or undecodable pixel data: name the file, not a traceback
            raise SeriesError(
                f"{file}: pixel data unreadable ({type(error).__name__}: {error}); replace the file "
                "(a truncated download?)"
            ) from error
        datasets.append(dataset)
    if not datasets:
        raise SeriesError(f"{folder}: holds no DICOM slices")
    try:
        orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        positions = np.array([np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets])
        spacing = [float(v) for v in datasets[0].PixelSpacing]
    except AttributeError as error:
        raise SeriesError(f"{folder}: slice lacks a geometry tag ({error})") from error
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(normal[0]) < 0.8:
        raise SeriesError(f"{folder}: not a sagittal series (slice normal {np.round(normal, 2).tolist()})")
    shapes = {(int(d.Rows), int(d.Columns)) for d in datasets}
    if len(shapes) != 1:
        raise SeriesError(f"{folder}: slices have different sizes {sorted(shapes)}")

    instance = np.array([int(getattr(d, "InstanceNumber", i)) for i, d in enumerate(datasets)])
    series_order = np.argsort(instance, kind="stable")
    series_index = np.empty(len(datasets), dtype=int)
    series_index[series_order] = np.arange(len(datasets))

    # Position along the patient's x axis; lateral is +x for the left knee, -x for the right.
    lateral_sign = 1.0 if side == "left" else -1.0
    lateral_mm = positions[:, 0] * lateral_sign
    order = np.argsort(lateral_mm, kind="stable")
    # ImageOrientationPatient: first triple is the direction along a row (column index grows),
    # second along a column (row index grows). Make rows run inferior (-z) and columns posterior (+y).
    flip_rows, flip_cols = bool(col_dir[2] > 0), bool(row_dir[1] < 0)
    # Each slice is written straight into one preallocated array (flips as views): stacking
    # per-slice float copies and flipping afterwards cost more than reading the files.
    rows, columns = shapes.pop()
    if any(pixels.shape != (rows, columns) for pixels in slices):
        raise SeriesError(
            f"{folder}: a slice's pixel data does not have its declared {rows} x {columns} shape"
        )
    voxels = np.empty((len(datasets), rows, columns), dtype=np.float32)
    for k, i in enumerate(order):
        voxels[k] = slices[i][:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]
    return KneeVolume(
        voxels=voxels,
        spacing_row_mm=spacing[0],
        spacing_col_mm=spacing[1],
        slice_positions_mm=lateral_mm[order],
        series_index=series_index[order],
        side=side,
        path=folder,
    )


def _pixels(dataset: object) -> np.ndarray:
    """Stored values mapped to signal: rescale applied, MONOCHROME1 inverted so bright = high signal."""
    pixels = _stored_values(dataset)
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    inverted = getattr(dataset, "PhotometricInterpretation", "MONOCHROME2") == "MONOCHROME1"
    if slope == 1.0 and intercept == 0.0 and not inverted:
        return pixels  # the common case: stored values are the signal, converted once by the caller
    pixels = pixels.astype(np.float32) * slope + intercept
    if inverted:
        pixels = pixels.max() - pixels
    return pixels


def _stored_values(dataset: object) -> np.ndarray:
    """The stored pixel values of one slice (as pydicom's ``pixel_array`` gives them).

    Uncompressed, unsigned 16-bit, single-frame data (what MR scanners write) is read straight
    from the bytes, with bits above BitsStored cleared as pydicom does: its general decoder costs
    about 1 ms a slice, a third of reading a knee. Anything else goes through ``pixel_array``.
    """
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    rows, columns = int(getattr(dataset, "Rows", 0)), int(getattr(dataset, "Columns", 0))
    bits = int(getattr(dataset, "BitsStored", 16) or 16)
    if (
        syntax is not None
        and not syntax.is_compressed
        and getattr(dataset, "BitsAllocated", None) == 16
        and getattr(dataset, "PixelRepresentation", None) == 0
        and getattr(dataset, "SamplesPerPixel", 1) == 1
        and int(getattr(dataset, "NumberOfFrames", 1) or 1) == 1
        and 0 < bits <= 16
    ):
        data = getattr(dataset, "PixelData", b"")
        if len(data) >= 2 * rows * columns > 0:
            dtype = np.dtype("<u2" if syntax.is_little_endian else ">u2")
            values = np.frombuffer(data, dtype=dtype, count=rows * columns).reshape(rows, columns)
            return values if bits == 16 else values & np.uint16((1 << bits) - 1)
    return dataset.pixel_array  # type: ignore[attr-defined]
