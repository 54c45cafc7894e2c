"""Refuse a knee pair that is not one person's left and right sagittal series, before any work.

Only headers are read here (``stop_before_pixels``), in the order ``series_io`` reads the files
(names sorted, hidden files skipped, non-DICOM files ignored), so slice ``i`` of the series in
InstanceNumber order is ``SeriesHeaders.files[i]`` here and ``series_index == i`` there.
Every refusal is a :class:`PredictInputError` whose message names the folder and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kneepain.contracts import KNEES

SAGITTAL_MIN_NORMAL_X = 0.8  # the threshold series_io reads a series as sagittal with
ORIENTATION_TOLERANCE = 1e-3
_LATERALITY = {"L": "left", "R": "right"}


class PredictInputError(ValueError):
    """Input ``predict`` cannot use as asked: bad folders, a mismatched pair, an unusable bundle."""


@dataclass(frozen=True)
class SeriesHeaders:
    """One knee series' headers, in InstanceNumber order (the order of ``series_index``)."""

    folder: Path
    files: list[Path]
    instance_numbers: list[int]
    positions: np.ndarray  # (n, 3) ImagePositionPatient, mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient: along a row, then along a column
    spacing_rc_mm: tuple[float, float]  # PixelSpacing: between rows, between columns
    rows: int
    columns: int
    patient_id: str | None
    series_uid: str | None
    description: str | None
    side: str | None  # from the header; None when the header does not say
    side_source: str

    @property
    def n_slices(self) -> int:
        return len(self.files)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


def header_side(description: str | None, laterality: str | None) -> tuple[str | None, str]:
    """Knee side from SeriesDescription (``SAG_IW_TSE_LEFT`` as ingest reads it), else Laterality."""
    from kneepain.ingest.dicom_scan import series_side

    side = series_side(description)
    if side is not None:
        return side, f"SeriesDescription {description!r}"
    side = _LATERALITY.get(str(laterality or "").strip().upper())
    if side is not None:
        return side, f"Laterality {laterality!r}"
    return None, "not in the header (SeriesDescription and Laterality are silent)"


def read_series_headers(folder: str | Path) -> SeriesHeaders:
    """Read every DICOM header in ``folder`` (any file names, with or without extension).

    Raises PredictInputError when the folder is missing, empty, holds no DICOM file, mixes
    series or orientations, or lacks a geometry tag.
    """
    import pydicom

    from kneepain.preprocess.series_io import DicomLimits, SeriesError, read_header

    limits = DicomLimits.from_environment()
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictInputError(f"{folder}: series folder does not exist (or is not a folder)")
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not candidates:
        raise PredictInputError(f"{folder}: folder is empty; expected the DICOM files of one knee series")
    headers: list[tuple[Path, Any]] = []
    total_bytes = 0
    for path in candidates:
        try:
            header = read_header(path)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError):
            continue
        except SeriesError as error:
            raise PredictInputError(str(error)) from error
        except Exception as error:  # pydicom raises many types for a damaged header
            raise PredictInputError(
                f"{path}: unreadable DICOM header ({type(error).__name__}: {error}); replace the file"
            ) from error
        try:
            total_bytes += limits.check_slice(path, header)
            limits.check_series(folder, total_bytes)
        except SeriesError as error:
            raise PredictInputError(str(error)) from error
        headers.append((path, header))
    if not headers:
        raise PredictInputError(
            f"{folder}: none of its {len(candidates)} file(s) is DICOM (e.g. {candidates[0].name!r}); "
            "expected the DICOM files of one knee series"
        )
    first = headers[0][1]
    uids = {str(h.get("SeriesInstanceUID", "")) for _, h in headers} - {""}
    if len(uids) > 1:
        raise PredictInputError(
            f"{folder}: holds {len(uids)} different series (SeriesInstanceUID); one expected"
        )
    try:
        orientations = np.array([np.asarray(h.ImageOrientationPatient, float) for _, h in headers])
        positions = np.array([np.asarray(h.ImagePositionPatient, float) for _, h in headers])
        spacing = tuple(float(v) for v in first.PixelSpacing)
        rows, columns = int(first.Rows), int(first.Columns)
    except (AttributeError, TypeError, ValueError) as error:
        raise PredictInputError(f"{folder}: a slice lacks a geometry tag ({error})") from error
    if orientations.shape[1:] != (6,) or positions.shape[1:] != (3,) or len(spacing) != 2:
        raise PredictInputError(
            f"{folder}: malformed ImageOrientationPatient / ImagePositionPatient / PixelSpacing"
        )
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise PredictInputError(
            f"{folder}: slices have different ImageOrientationPatient; one plane expected"
        )
    instance = np.array([int(h.get("InstanceNumber", i) or i) for i, (_, h) in enumerate(headers)])
    order = np.argsort(instance, kind="stable")  # the order series_io calls series_index
    side, source = header_side(first.get("SeriesDescription"), first.get("Laterality"))
    return SeriesHeaders(
        folder=folder,
        files=[headers[i][0] for i in order],
        instance_numbers=[int(instance[i]) for i in order],
        positions=positions[order],
        orientation=orientations[0],
        spacing_rc_mm=(spacing[0], spacing[1]),
        rows=rows,
        columns=columns,
        patient_id=str(first.PatientID).strip() if first.get("PatientID") else None,
        series_uid=next(iter(uids)) if uids else None,
        description=str(first.get("SeriesDescription") or "") or None,
        side=side,
        side_source=source,
    )


def _plane(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def check_series(headers: SeriesHeaders, flag: str, needed_slices: int) -> None:
    """One series: sagittal, long enough for the model's slice window."""
    normal = headers.normal
    if abs(normal[0]) < SAGITTAL_MIN_NORMAL_X:
        raise PredictInputError(
            f"{headers.folder} ({flag}): not a sagittal series: ImageOrientationPatient "
            f"{np.round(headers.orientation, 3).tolist()} gives slice normal {np.round(normal, 2).tolist()} "
            f"(looks {_plane(normal)}); the model needs the sagittal SAG_IW_TSE series"
        )
    if headers.n_slices < needed_slices:
        raise PredictInputError(
            f"{headers.folder} ({flag}): holds {headers.n_slices} slices; the model needs at least "
            f"{needed_slices} ({needed_slices // 2} either side of the centre slice)"
        )


def check_pair(left: SeriesHeaders, right: SeriesHeaders, needed_slices: int) -> list[str]:
    """Refuse a pair that is not one person's left and right knee; return warnings to show.

    Refused: a series given for the other side than its header says (both folders the same side
    included), the same series twice, two different PatientIDs, a non-sagittal or too short
    series. A header that does not state its side is accepted with a warning.
    """
    warnings: list[str] = []
    if left.folder.resolve() == right.folder.resolve() or (
        left.series_uid is not None and left.series_uid == right.series_uid
    ):
        raise PredictInputError(
            f"{left.folder} and {right.folder}: the same series was given for both knees "
            f"(SeriesInstanceUID {left.series_uid}); give the left and the right knee's series"
        )
    if left.side is not None and left.side == right.side:
        raise PredictInputError(
            f"{left.folder} (--left) and {right.folder} (--right): both are {left.side.upper()} knee series "
            f"({left.side_source}; {right.side_source}); one left and one right knee are needed"
        )
    for headers, flag, side in ((left, "--left", KNEES[0]), (right, "--right", KNEES[1])):
        if headers.side is not None and headers.side != side:
            raise PredictInputError(
                f"{headers.folder} ({flag}): is a {headers.side.upper()} knee series "
                f"({headers.side_source}); swap --left and --right"
            )
        if headers.side is None:
            warnings.append(f"{headers.folder}: side {headers.side_source}; taken as {side} from {flag}")
        check_series(headers, flag, needed_slices)
    if left.patient_id and right.patient_id and left.patient_id != right.patient_id:
        raise PredictInputError(
            f"{left.folder} (PatientID {left.patient_id!r}) and {right.folder} (PatientID "
            f"{right.patient_id!r}): two different people; both knees of one person are needed"
        )
    if not (left.patient_id and right.patient_id):
        warnings.append("PatientID missing in a series: cannot check that both knees are one person's")
    return warnings


def check_replaceable_dir(folder: Path, option: str, marker: str) -> None:
    """Refuse an output folder given as ``option`` that is a file, or a non-empty folder without
    ``marker`` (the file an earlier output of this kind holds): the folder is replaced whole."""
    if folder.exists() and not folder.is_dir():
        raise PredictInputError(f"{folder}: {option} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).exists():
        raise PredictInputError(
            f"{folder}: {option} is a non-empty folder without {marker}; it is replaced whole, "
            "so give a new folder or an earlier output's"
        )
