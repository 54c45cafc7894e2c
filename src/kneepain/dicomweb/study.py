"""Find, fetch and store over DICOMweb (QIDO-RS, WADO-RS, STOW-RS) with ``dicomweb-client``.

The knee series are chosen by the rules the folder reader uses: the side from SeriesDescription
(``SAG_IW_TSE_LEFT``) or else Laterality (``kneepain.predict.checks.header_side``), the plane from
ImageOrientationPatient (sagittal as ``series_io`` reads it). OAI stores each knee as its own
study, so a person's pair may span two studies: ``--study`` may be given twice, or ``--patient``
alone searches all of that person's studies. Every failure is a :class:`DicomWebError` naming
the server and what to change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kneepain.contracts import KNEES
from kneepain.predict.checks import SAGITTAL_MIN_NORMAL_X, PredictInputError, header_side

DEFAULT_TIMEOUT_S = 30.0
ATTEMPTS = 2  # each DICOMweb request
_NOT_IMAGES = {"SR", "KO", "PR", "SEG", "RTSTRUCT", "REG", "DOC"}
OWN_SERIES_PREFIX = "kneepain "  # the SeriesDescription of every object kneepain.export makes
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}  # pixel data and the like: not needed here
# QIDO-RS returns SeriesDescription and Modality by default; asking for tags outside a server's index
# (Orthanc: StudyDate at series level) makes it open stored files, ours included
_SERIES_FIELDS = ["SeriesDescription", "Modality", "SeriesNumber"]


class DicomWebError(PredictInputError):
    """The DICOMweb server cannot be used as asked: unreachable, refusing, or without the series."""


@dataclass(frozen=True)
class KneeSeries:
    """One knee's series on the server, and why it was taken for that side."""

    side: str
    study_uid: str
    series_uid: str
    description: str
    side_source: str
    patient_id: str


@dataclass(frozen=True)
class _Candidate:
    study_uid: str
    series_uid: str
    description: str
    side: str | None
    side_source: str
    plane: str
    patient_id: str


def connect(
    url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """A ``DICOMwebClient`` for ``url`` (the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``).

    ``user``/``password``: HTTP basic authentication; ``token``: an OAuth bearer token; each
    request gives up after ``timeout_s`` seconds.
    """
    import requests
    from dicomweb_client import DICOMwebClient

    if user and token:
        raise DicomWebError(f"{url}: give either --user/--password or --token, not both")
    if not url.startswith(("http://", "https://")):
        raise DicomWebError(f"{url}: --dicomweb must be an http:// or https:// URL (the DICOMweb root)")
    if timeout_s <= 0:
        raise DicomWebError(f"--timeout must be positive seconds, got {timeout_s}")
    session = requests.Session()
    if user:
        session.auth = (user, password or "")
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout_s)
    # dicomweb-client retries every failed request 5 times with back-off (15 s and more for a server
    # that is down); one retry after 0.5 s covers a hiccup and keeps a refusal prompt
    client.set_http_retry_params(retry=True, max_attempts=ATTEMPTS, wait_exponential_multiplier=250)
    return client


@contextlib.contextmanager
def talking_to(client: Any, what: str) -> Iterator[None]:
    """Turn a requests failure into one DicomWebError line: which server, what failed, what to do."""
    import requests

    url = getattr(client, "base_url", "DICOMweb server")
    try:
        yield
    except requests.exceptions.Timeout as error:
        raise DicomWebError(
            f"{url}: no answer within {client._timeout} s ({ATTEMPTS} tries) while {what}; "
            "raise --timeout or check the server"
        ) from error
    except requests.exceptions.ConnectionError as error:
        raise DicomWebError(
            f"{url}: cannot reach the DICOMweb server ({ATTEMPTS} tries) while {what} "
            "(is it running, is the URL right?)"
        ) from error
    except requests.exceptions.HTTPError as error:
        code = error.response.status_code if error.response is not None else "?"
        hint = {
            401: "it wants credentials: give --user (password in KNEEPAIN_DICOMWEB_PASSWORD) or --token",
            403: "the credentials given may not do this",
            404: "check that the URL is the DICOMweb root (e.g. http://host:8042/dicom-web)",
        }.get(code, "see the server's log")
        raise DicomWebError(f"{url}: HTTP {code} while {what}; {hint}") from error


def _value(item: dict[str, Any], tag: str) -> Any:
    """First value of a DICOM JSON attribute (PS3.18 F.2), or None."""
    values = item.get(tag, {}).get("Value") or [None]
    value = values[0]
    return value.get("Alphabetic") if isinstance(value, dict) else value


def _studies(client: Any, studies: Sequence[str], patient: str | None) -> list[dict[str, Any]]:
    """The studies to look in: the given UIDs (checked to exist and be the patient's) or the patient's."""
    found: list[dict[str, Any]] = []
    fields = ["PatientID", "StudyDate", "StudyDescription"]
    for uid in studies:
        with talking_to(client, f"searching study {uid}"):
            hits = client.search_for_studies(search_filters={"StudyInstanceUID": uid}, fields=fields)
        if not hits:
            raise DicomWebError(
                f"{client.base_url}: study {uid} is not on the server (QIDO-RS found nothing)"
            )
        owner = _value(hits[0], "00100020")
        if patient is not None and owner != patient:
            raise DicomWebError(
                f"{client.base_url}: study {uid} belongs to PatientID {owner!r}, not --patient {patient!r}"
            )
        found.append(hits[0])
    if not studies and patient is not None:
        with talking_to(client, f"searching the studies of PatientID {patient}"):
            found = client.search_for_studies(search_filters={"PatientID": patient}, fields=fields)
        if not found:
            raise DicomWebError(f"{client.base_url}: no study of PatientID {patient!r} on the server")
    if not found:
        raise DicomWebError(
            "give --study UID (once per study; OAI keeps each knee in its own) or --patient ID"
        )
    return found


def _candidate(client: Any, study_uid: str, series: dict[str, Any]) -> _Candidate | None:
    """Side and plane of one series from one instance's metadata (WADO-RS); None for non-images."""
    import pydicom

    series_uid = _value(series, "0020000E")
    with talking_to(client, f"reading series {series_uid}"):
        instances = client.search_for_instances(study_uid, series_uid, limit=1)
        if not instances:
            return None
        sop_uid = _value(instances[0], "00080018")
        metadata = client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
    header = pydicom.Dataset.from_json(
        {k: v for k, v in metadata.items() if v.get("vr") not in _BINARY_VRS and "BulkDataURI" not in v}
    )
    description = str(header.get("SeriesDescription") or "")
    side, source = header_side(description, header.get("Laterality"))
    try:
        orientation = np.asarray(header.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
        plane = plane if plane != "sagittal" or abs(normal[0]) >= SAGITTAL_MIN_NORMAL_X else "oblique"
    except (AttributeError, TypeError, ValueError):
        plane = "no orientation"
    return _Candidate(
        study_uid, series_uid, description, side, source, plane, str(header.get("PatientID") or "")
    )


def _not_a_knee_image(series: dict[str, Any]) -> bool:
    """A series that holds no image (reports, states, segmentations) or is kneepain's own output."""
    modality = str(_value(series, "00080060") or "")
    description = str(_value(series, "0008103E") or "")
    return modality in _NOT_IMAGES or description.startswith(OWN_SERIES_PREFIX)


def find_knee_series(client: Any, studies: Sequence[str], patient: str | None) -> dict[str, KneeSeries]:
    """The sagittal left and right knee series in the given studies (or all of ``patient``'s).

    A side named by SeriesDescription wins over one named by Laterality. Raises DicomWebError,
    listing what the studies hold, when a side has no sagittal series or several equally good ones.
    """
    candidates: list[_Candidate] = []
    for study in _studies(client, studies, patient):
        study_uid = _value(study, "0020000D")
        with talking_to(client, f"searching the series of study {study_uid}"):
            series_list = client.search_for_series(study_uid, fields=_SERIES_FIELDS)
        for series in series_list:
            if _not_a_knee_image(series):
                continue
            candidate = _candidate(client, study_uid, series)
            if candidate is not None:
                candidates.append(candidate)
    where = f"{client.base_url} ({f'PatientID {patient}' if patient else 'study ' + ', '.join(studies)})"
    seen = "; ".join(f"{c.description or '(no description)'}: {c.plane}, side {c.side}" for c in candidates)
    chosen: dict[str, KneeSeries] = {}
    for side in KNEES:
        fits = [c for c in candidates if c.side == side and c.plane == "sagittal"]
        named = [c for c in fits if c.side_source.startswith("SeriesDescription")]
        fits = named or fits
        if not fits:
            raise DicomWebError(
                f"{where}: no sagittal {side.upper()} knee series (side from SeriesDescription "
                f"SAG_IW_TSE_{side.upper()} or Laterality); the series found: {seen or 'none'}"
            )
        if len(fits) > 1:
            listed = ", ".join(f"{c.description} (study {c.study_uid}, series {c.series_uid})" for c in fits)
            raise DicomWebError(
                f"{where}: {len(fits)} sagittal {side.upper()} knee series ({listed}); "
                "name the visit's study or studies with --study"
            )
        best = fits[0]
        chosen[side] = KneeSeries(
            side, best.study_uid, best.series_uid, best.description, best.side_source, best.patient_id
        )
    return chosen


def download_knee_series(client: Any, pair: dict[str, KneeSeries], folder: Path) -> dict[str, Path]:
    """WADO-RS retrieve of both series into ``folder/<side>/<SOPInstanceUID>.dcm``; the folders."""
    folders: dict[str, Path] = {}
    for side, series in pair.items():
        target = Path(folder) / side
        target.mkdir(parents=True, exist_ok=False)
        with talking_to(client, f"retrieving the {side} knee series {series.series_uid}"):
            for dataset in client.iter_series(series.study_uid, series.series_uid):
                dataset.save_as(target / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        folders[side] = target
    return folders


def store_datasets(client: Any, datasets: Sequence[Any]) -> list[str]:
    """STOW-RS each object into its own study; the stored SOP Instance UIDs. Refusals raise."""
    stored: list[str] = []
    by_study: dict[str, list[Any]] = {}
    for dataset in datasets:
        by_study.setdefault(str(dataset.StudyInstanceUID), []).append(dataset)
    for study_uid, group in by_study.items():
        with talking_to(client, f"storing {len(group)} object(s) into study {study_uid}"):
            response = client.store_instances(group, study_instance_uid=study_uid)
        failed = response.get("FailedSOPSequence") or []
        if failed:
            reasons = ", ".join(
                f"{item.ReferencedSOPInstanceUID} (reason {item.FailureReason})" for item in failed
            )
            raise DicomWebError(f"{client.base_url}: STOW-RS refused {reasons}")
        stored += [str(dataset.SOPInstanceUID) for dataset in group]
    return stored
