"""kneepain's results as standard DICOM objects (highdicom) for PACS viewers: see ``dicom_objects``."""

from kneepain.export.dicom_objects import KneeObjects, check_dicom_out, knee_objects, write_objects

__all__ = ["KneeObjects", "check_dicom_out", "knee_objects", "write_objects"]
