"""``kneepain predict`` with a PACS: series fetched over DICOMweb and/or results written as DICOM.

The knees are predicted by ``predict_person`` on folders exactly as from disk: a study fetched
over DICOMweb is first written into a temporary folder per knee (removed afterwards), so both
paths share every step after the download. The DICOM objects (``kneepain.export``) are written
to ``--dicom-out`` and/or sent back by STOW-RS (``--store``) into the source studies.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kneepain.dicomweb.study import (
    DEFAULT_TIMEOUT_S,
    DicomWebError,
    connect,
    download_knee_series,
    find_knee_series,
    store_datasets,
)


@dataclass(frozen=True)
class PacsSource:
    """Where to read a person's knees: a DICOMweb root, the studies or patient, credentials, timeout."""

    url: str
    studies: list[str] = field(default_factory=list)
    patient: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def client(self) -> Any:
        return connect(
            self.url, user=self.user, password=self.password, token=self.token, timeout_s=self.timeout_s
        )


def predict_with_pacs(
    left: Path | None,
    right: Path | None,
    bundle: Path,
    out: Path | None,
    *,
    source: PacsSource | None = None,
    dicom_out: Path | None = None,
    store: bool = False,
    precision: str = "fp32",
    allow_qc_fail: bool = False,
) -> dict[str, Any]:
    """Predict from folders or a DICOMweb study; export DICOM objects; the prediction document.

    The document gains ``dicomweb`` (the series used, objects written or stored and the seconds
    each step took: find, retrieve, predict, dicom, store). Raises PredictInputError (DicomWebError
    for the server) with one line saying what to change.
    """
    from kneepain.export import check_dicom_out, knee_objects, write_objects
    from kneepain.predict import predict_person

    if (source is None) == (left is None or right is None):
        raise DicomWebError(
            "give either --left and --right folders, or --dicomweb URL with --study/--patient"
        )
    if store and source is None:
        raise DicomWebError(
            "--store sends the results back to the PACS the knees came from: it needs --dicomweb"
        )
    if dicom_out is not None:
        check_dicom_out(Path(dicom_out))
    timing: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = round(now - clock, 3)
        clock = now

    info: dict[str, Any] = {"timing_s": timing}
    with tempfile.TemporaryDirectory(prefix="kneepain-dicomweb-") as tmp:
        client = None
        if source is not None:
            client = source.client()
            pair = find_knee_series(client, source.studies, source.patient)
            lap("find")
            folders = download_knee_series(client, pair, Path(tmp))
            left, right = folders["left"], folders["right"]
            lap("retrieve")
            info["url"] = source.url
            info["series"] = {
                side: {"study_uid": s.study_uid, "series_uid": s.series_uid, "description": s.description}
                for side, s in pair.items()
            }
        assert left is not None and right is not None
        maps: dict[str, Any] | None = {} if (dicom_out is not None or store) else None
        document = predict_person(
            left, right, bundle, out, precision=precision, allow_qc_fail=allow_qc_fail, maps=maps
        )
        lap("predict")
        if maps is not None:
            objects = knee_objects(document, maps)
            lap("dicom")
            if dicom_out is not None:
                info["written"] = [str(p) for p in write_objects(objects, Path(dicom_out))]
                lap("write")
            if store:
                info["stored"] = store_datasets(client, [d for knee in objects for d in knee.datasets()])
                lap("store")
    document["dicomweb"] = info
    return document
