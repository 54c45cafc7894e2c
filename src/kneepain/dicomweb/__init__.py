"""A PACS as input and output: find and fetch a person's knee series over DICOMweb, store results back.

``connect`` makes a ``dicomweb_client`` client (HTTP basic or bearer token, a timeout);
``find_knee_series`` picks the sagittal left and right knee series of a study (or a patient) by the
folder reader's own rules; ``download_knee_series`` writes them into folders that
``kneepain.predict.predict_person`` reads as it reads any folder; ``store_datasets`` sends
kneepain's DICOM objects back by STOW-RS. See docs/pacs.md.
"""

from kneepain.dicomweb.study import (
    DicomWebError,
    KneeSeries,
    connect,
    download_knee_series,
    find_knee_series,
    store_datasets,
)

__all__ = [
    "DicomWebError",
    "KneeSeries",
    "connect",
    "download_knee_series",
    "find_knee_series",
    "store_datasets",
]
