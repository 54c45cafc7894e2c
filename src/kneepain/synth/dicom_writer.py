"""DICOM MR series writer: one file per slice, no extension, OAI-like tags and consistent geometry.

Geometry convention (also in docs/contracts.md): patient coordinates are DICOM LPS (+x = patient
left). Sagittal series have ImageOrientationPatient ``[0, 1, 0, 0, 0, -1]`` (rows run posterior,
columns run inferior), so the slice normal (row x column) is ``-x``, toward the patient's right.
ImagePositionPatient moves 3 mm along that normal per InstanceNumber and SliceLocation is the
position along the normal. Slice index therefore runs toward the patient's right in both knees:
lateral for the right knee, medial for the left knee.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's registered root for generated UIDs


@dataclass(frozen=True)
class SeriesInfo:
    """What identifies one series in the study and how it sits in the scanner."""

    patient_id: str
    study_date: str
    accession: str  # OAI barcode
    study_description: str
    series_description: str
    series_number: int
    laterality: str  # "L" or "R"
    orientation: tuple[float, ...]  # ImageOrientationPatient
    first_position: tuple[float, float, float]  # ImagePositionPatient of slice index 0
    slice_step: tuple[float, float, float]  # position change per slice index
    pixel_mm: float
    slice_mm: float
    uid_seed: str  # makes UIDs unique and reproducible


def uid(*parts: object) -> str:
    """A DICOM UID derived only from ``parts`` (same parts, same UID)."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def write_series(
    folder: Path, pixels: np.ndarray, info: SeriesInfo, kept: list[int] | None = None
) -> list[Path]:
    """Write ``pixels`` (uint16, slices x rows x cols) as files 001, 002, ... in ``folder``.

    ``kept`` gives each slice's original index (InstanceNumber - 1 and position); by default
    0..n-1. Returns the written paths.
    """
    if pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise ValueError(
            f"{folder}: expected a uint16 (slices, rows, cols) volume, got {pixels.dtype} {pixels.shape}"
        )
    kept = list(range(pixels.shape[0])) if kept is None else kept
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = uid(info.uid_seed, info.patient_id, info.accession, "study")
    series_uid = uid(info.uid_seed, info.patient_id, info.series_number, "series")
    frame_uid = uid(info.uid_seed, info.patient_id, info.accession, "frame")
    row_dir = np.array(info.orientation[:3])
    col_dir = np.array(info.orientation[3:])
    normal = np.cross(row_dir, col_dir)
    ds = _series_dataset(info, study_uid, series_uid, frame_uid, pixels.shape[1:])
    paths = []
    # One dataset per series, updated per slice: building ~50 elements per file dominated the time.
    for file_index, (image, original) in enumerate(zip(pixels, kept, strict=True), start=1):
        position = np.array(info.first_position) + original * np.array(info.slice_step)
        sop_uid = uid(info.uid_seed, series_uid, original)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = original + 1
        ds.ImagePositionPatient = [_ds_number(v) for v in position]
        ds.SliceLocation = _ds_number(float(position @ normal))
        ds.PixelData = np.ascontiguousarray(image, dtype="<u2").tobytes()
        path = folder / f"{file_index:03d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _series_dataset(
    info: SeriesInfo, study_uid: str, series_uid: str, frame_uid: str, shape: tuple[int, ...]
) -> Dataset:
    """The tags shared by every slice of a series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID_PREFIX + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.Modality = "MR"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Trio"
    ds.MagneticFieldStrength = 3
    ds.PatientID = info.patient_id
    ds.PatientName = info.patient_id
    ds.StudyDate = info.study_date
    ds.SeriesDate = info.study_date
    ds.AccessionNumber = info.accession
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = info.series_description
    ds.ClinicalTrialTimePointID = "00"
    ds.ClinicalTrialTimePointDescription = "ENROLLMENT"
    ds.BodyPartExamined = "KNEE"
    ds.Laterality = info.laterality
    ds.SeriesNumber = info.series_number
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = 3200
    ds.EchoTime = 30
    ds.SliceThickness = info.slice_mm
    ds.SpacingBetweenSlices = info.slice_mm
    ds.PixelSpacing = [info.pixel_mm, info.pixel_mm]
    ds.ImageOrientationPatient = [_ds_number(v) for v in info.orientation]
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 400
    ds.WindowWidth = 800
    return ds


def _ds_number(value: float) -> str:
    """A decimal string short enough for DICOM's 16-character DS limit."""
    return f"{value:.6g}" if abs(value) >= 1e-9 else "0"
