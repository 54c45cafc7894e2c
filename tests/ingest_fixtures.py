"""Small OAI-format trees for the ingest tests: real DICOM files (pydicom) and pipe-delimited text.

Images are tiny (16 x 16 by default) because the tests read headers; a full-size writer exists
for timing. Every helper writes real files that ingest then reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
OTHER_SERIES = ("SAG_3D_DESS_LEFT", "COR_IW_TSE_RIGHT", "MP_LOCATOR_LEFT")


def write_slice(
    path: Path,
    *,
    subject: str,
    description: str,
    instance: int,
    position_mm: float,
    rows: int = 16,
    columns: int = 16,
    spacing: tuple[float, float] = (0.357, 0.511),
    orientation: tuple[float, ...] = SAGITTAL,
    series_uid: str = "1.2.3",
) -> None:
    """Write one MR slice with the tags ingest reads and random 12-bit pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = subject
    ds.StudyDate = "20050101"
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    normal = np.cross(orientation[:3], orientation[3:6])
    ds.ImagePositionPatient = [float(v) for v in normal * position_mm]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(instance)
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    *,
    subject: str,
    description: str,
    n_slices: int = 5,
    skip: tuple[int, ...] = (),
    **slice_options: object,
) -> list[Path]:
    """Write a series folder of slices ``001``, ``002``, ... (no extension); ``skip`` leaves out instances."""
    uid = generate_uid()
    paths = []
    for instance in range(1, n_slices + 1):
        if instance in skip:
            continue
        path = folder / f"{instance:03d}"
        write_slice(
            path,
            subject=subject,
            description=description,
            instance=instance,
            position_mm=3.0 * instance,
            series_uid=uid,
            **slice_options,
        )
        paths.append(path)
    return paths


@dataclass
class Participant:
    """One fixture participant: clinical cells as OAI writes them, and which series exist."""

    subject_id: str
    pain_right: str = "0: No"
    pain_left: str = "1: Yes"
    womac_right: str = "1"
    womac_left: str = "6.25"
    age: str = "61"
    bmi: str = "28.4"
    weight: str = ""
    height: str = ""
    sex: str = "2: Female"
    kl: dict[str, str] = field(default_factory=lambda: {"right": "1: 1", "left": "2: 2"})
    sides: tuple[str, ...] = ("left", "right")
    cohort_folder: str = "0.C.2"
    in_enrollees: bool = True
    in_all_clinical: bool = True


def series_folder(visit_dir: Path, person: Participant, side: str) -> Path:
    """Where the fixture puts a participant's SAG_IW_TSE series (8-digit series folder)."""
    number = "1" + person.subject_id[-5:] + ("01" if side == "left" else "02")
    return visit_dir / person.cohort_folder / person.subject_id / "20050101" / number


def write_images(
    images_root: Path,
    people: list[Participant],
    *,
    index: bool = True,
    nested: bool = False,
    lower_case: bool = False,
    n_slices: int = 5,
    **slice_options: object,
) -> Path:
    """Write each participant's SAG_IW_TSE series (plus a distractor series) and the index CSV.

    Returns the visit folder. ``nested`` puts it at ``images_root/package/00m/00m``.
    """
    visit_dir = images_root / "package" / "00m" / "00m" if nested else images_root / "00m"
    lines = ["Folder,ParticipantID,StudyDate,Barcode,StudyDescription,SeriesDescription"]
    for person in people:
        for side in person.sides:
            folder = series_folder(visit_dir, person, side)
            description = f"SAG_IW_TSE_{side.upper()}"
            if lower_case:
                description = description.lower()
            write_series(
                folder, subject=person.subject_id, description=description, n_slices=n_slices, **slice_options
            )
            study = f"OAI^MR^ENROLLMENT^{side.upper()}" + (" " if side == "right" else "")
            relative = folder.relative_to(visit_dir).as_posix()
            lines.append(f"{relative},{person.subject_id},20050101,016610000001,{study},{description}")
        distractor = visit_dir / person.cohort_folder / person.subject_id / "20050101" / "19999999"
        write_series(distractor, subject=person.subject_id, description=OTHER_SERIES[0], n_slices=2)
        lines.append(
            f"{distractor.relative_to(visit_dir).as_posix()},{person.subject_id},20050101,0,x,{OTHER_SERIES[0]}"
        )
    if index:
        (visit_dir / "contents.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return visit_dir


def _write_pipe(path: Path, header: list[str], rows: list[list[str]], *, latin1_crlf: bool) -> None:
    text_lines = ["|".join(header)] + ["|".join(r) for r in rows]
    newline = "\r\n" if latin1_crlf else "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(text_lines) + newline).encode("latin-1" if latin1_crlf else "utf-8"))


def write_clinical(
    clinical_root: Path,
    people: list[Participant],
    *,
    latin1_crlf: bool = False,
    lower_case: bool = False,
    drop_column: str | None = None,
    extra_kl_rows: list[list[str]] | None = None,
) -> None:
    """Write AllClinical00, Enrollees and kxr_sq_bu00 in the OAI folder layout."""

    def name(text: str) -> str:
        return text.lower() if lower_case else text

    all_header = ["ID", "V00AGE", "P01BMI", "P01WEIGHT", "P01HEIGHT"]
    all_header += ["V00WOMKPR", "V00WOMKPL", "P01KPNREV", "P01KPNLEV", "V00SITE"]
    all_rows = [
        [
            p.subject_id,
            p.age,
            p.bmi,
            p.weight,
            p.height,
            p.womac_right,
            p.womac_left,
            p.pain_right,
            p.pain_left,
            "Côte",
        ]
        for p in people
        if p.in_all_clinical
    ]
    if drop_column is not None and drop_column in all_header:
        position = all_header.index(drop_column)
        all_header.pop(position)
        for row in all_rows:
            row.pop(position)
    _write_pipe(
        clinical_root / name("AllClinical_ASCII") / name("AllClinical00.txt"),
        all_header,
        all_rows,
        latin1_crlf=latin1_crlf,
    )
    enrollees = [[p.subject_id, p.sex, "1: White", "1: Progression"] for p in people if p.in_enrollees]
    _write_pipe(
        clinical_root / name("General_ASCII") / name("Enrollees.txt"),
        ["ID", "P02SEX", "P02RACE", "V00COHORT"],
        enrollees,
        latin1_crlf=latin1_crlf,
    )
    kl_rows = []
    for p in people:
        for side, code in (("right", "1: Right"), ("left", "2: Left")):
            kl_rows.append([p.subject_id, code, "15", p.kl[side]])
    kl_rows.extend(extra_kl_rows or [])
    folder = clinical_root / name("X-Ray Image Assessments_ASCII") / name("Semi-Quant Scoring_ASCII")
    _write_pipe(
        folder / name("kxr_sq_bu00.txt"),
        ["ID", "SIDE", "READPRJ", "V00XRKL"],
        kl_rows,
        latin1_crlf=latin1_crlf,
    )
