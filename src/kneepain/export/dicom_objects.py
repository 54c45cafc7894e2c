"""kneepain's findings as standard DICOM (highdicom): what a PACS viewer overlays on the original series.

Per knee, in that knee's own study (OAI keeps each knee in its own study):

- a **Parametric Map** of the CAM: one float frame per source slice that has a map, on the stored
  slice's grid, referencing that slice's SOP Instance UID, in its Frame of Reference;
- a **Comprehensive 3D SR** (TID 1500 measurement report): the probability that this knee is the
  painful one, the bundle that said so, the highest-CAM slice (referenced) and the hot spot as a
  3D point in patient coordinates, and the not-for-clinical-use statement;
- a **Secondary Capture** of predict's overlay, for viewers without parametric-map support.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kneepain import __version__
from kneepain.contracts import KNEES

SCHEME = "99KNEEPAIN"  # private coding scheme (PS3.16 8.2: 99 prefix) for what standard codes lack
SERIES_NUMBERS = {"pm": 9901, "sr": 9902, "sc": 9903}
NOT_CLINICAL = "kneepain research output, NOT FOR CLINICAL USE"
MANIFEST = "manifest.json"
LATERALITY = {"left": "L", "right": "R"}  # General Series Laterality, required for a paired body part


@dataclass
class KneeObjects:
    """The DICOM objects made for one knee, and the study they belong to."""

    side: str
    study_uid: str
    parametric_map: Any
    report: Any
    secondary_capture: Any | None

    def named(self) -> list[tuple[str, Any]]:
        """(kind, dataset) of each object made: cam_map, findings_sr, overlay_sc."""
        pairs = [
            ("cam_map", self.parametric_map),
            ("findings_sr", self.report),
            ("overlay_sc", self.secondary_capture),
        ]
        return [(kind, dataset) for kind, dataset in pairs if dataset is not None]

    def datasets(self) -> list[Any]:
        return [dataset for _, dataset in self.named()]


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


# Type 2 patient/study attributes highdicom copies; a source without them (kneepain synth) gets them empty
_TYPE2 = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "ReferringPhysicianName",
    "AccessionNumber",
)


def _read_header(path: Path) -> Any:
    """A source slice's header, with absent type 2 patient/study attributes present and empty."""
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _cam_frames(maps: dict[str, Any], k: int) -> list[tuple[int, np.ndarray]]:
    """(series_index, CAM on the stored grid) for every window slice with an image and a pose."""
    from kneepain.export.cam_grid import cam_on_stored_grid
    from kneepain.predict.geometry import CropGrid, SliceGeometry
    from kneepain.preprocess.registration import Pose

    config, head, result = maps["config"], maps["headers"][k], maps["results"][k]
    grid = CropGrid(config.crop_mm, config.image_size, tuple(config.crop_centre_mm))
    frames: dict[int, np.ndarray] = {}
    for s, series_index in enumerate(result.slice_series):
        if series_index is None or series_index in frames:
            continue
        if config.register:
            registration = result.registrations[s] if s < len(result.registrations) else None
            if registration is None:
                continue
            pose = registration.pose
        else:
            pose = Pose()
        geometry = SliceGeometry(
            position=head.positions[series_index],
            orientation=head.orientation,
            spacing_rc_mm=head.spacing_rc_mm,
            rows=head.rows,
            columns=head.columns,
        )
        frames[series_index] = cam_on_stored_grid(maps["cams"][k, s], grid, pose, geometry)
    return sorted(frames.items())


def _equipment(document: dict[str, Any]) -> dict[str, str]:
    bundle = document["bundle"]
    return {
        "manufacturer": "kneepain (research software)",
        "manufacturer_model_name": "kneepain Siamese knee pain model",
        "software_versions": __version__,
        "device_serial_number": str(bundle["model_json_sha256"])[:16],
    }


def parametric_map(document: dict[str, Any], maps: dict[str, Any], k: int) -> Any:
    """The CAM of knee ``k`` as a float Parametric Map, one frame per referenced source slice."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    side = KNEES[k]
    frames = _cam_frames(maps, k)
    if not frames:
        raise ValueError(f"{side} knee: no slice of the CAM window has an image and a registration")
    head = maps["headers"][k]
    sources = [_read_header(head.files[i]) for i, _ in frames]
    pixels = np.stack([m for _, m in frames]).astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CAM",
        lut_explanation="class activation (evidence for pain), arbitrary units",
        unit=codes.UCUM.NoUnits,
        value_range=(low, high if high > low else low + 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=pixels,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["pm"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(  # LINEAR_EXACT: CAM ranges are far narrower than 1
                window_center=(low + high) / 2,
                window_width=max(high - low, 1e-6),
                voi_lut_function="LINEAR_EXACT",
            )
        ],
        content_label="KNEEPAIN_CAM",
        content_description=f"{side} knee class activation map; {NOT_CLINICAL}"[:64],
        content_creator_name="kneepain^",
        **_equipment(document),
    )
    pm.SeriesDescription = f"kneepain CAM {side} knee (research)"
    pm.Laterality = LATERALITY[side]
    return pm


def structured_report(document: dict[str, Any], maps: dict[str, Any], k: int, evidence: list[Any]) -> Any:
    """TID 1500 report of knee ``k``: P(painful), bundle, highest-CAM slice, hot spot point, disclaimer."""
    import highdicom as hd
    from pydicom import Dataset
    from pydicom.sr.codedict import codes

    side = KNEES[k]
    knee = document["knees"][side]
    best = knee["best_slice"]
    spot = best["hot_spot"]
    bundle = document["bundle"]
    head = maps["headers"][k]
    best_source = _read_header(head.files[best["series_index"]]) if best["series_index"] is not None else None
    algorithm = hd.sr.AlgorithmIdentification(
        name="kneepain",
        version=__version__,
        parameters=[
            f"bundle model.json sha256 {bundle['model_json_sha256']}",
            f"fold {bundle.get('fold')}, cohort model {bundle.get('cohort_model')}",
            f"precision {document['precision']}",
        ],
    )
    unitless = codes.UCUM.NoUnits
    laterality = codes.SCT.Left if side == "left" else codes.SCT.Right
    sites = [hd.sr.FindingSite(anatomic_location=codes.SCT.Knee, laterality=laterality)]
    slice_refs = [hd.sr.SourceImageForMeasurement.from_source_image(best_source)] if best_source else None
    measurements = [
        hd.sr.Measurement(
            name=_code("PPAIN", "Probability that this knee is the painful one"),
            value=float(document[f"prob_{side}_painful"]),
            unit=unitless,
            algorithm_id=algorithm,
            finding_sites=sites,
        ),
        hd.sr.Measurement(
            name=_code("CAMSLICE", "Mean class activation on the highest-CAM slice"),
            value=float(best["cam_mean"]),
            unit=unitless,
            algorithm_id=algorithm,
            referenced_images=slice_refs,
        ),
        hd.sr.Measurement(
            name=_code("CAMPEAK", "Class activation at the hot spot"),
            value=float(spot["cam_value"]),
            unit=unitless,
            algorithm_id=algorithm,
            referenced_images=slice_refs,
        ),
    ]
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"kneepain {side} knee hot spot")
    finding = _code("HOTSPOT", "Class activation map hot spot")
    if spot["patient_mm"] is not None:
        group: Any = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=np.array([spot["patient_mm"]], dtype=float),
                frame_of_reference_uid=str(best_source.FrameOfReferenceUID),
            ),
            finding_type=finding,
            algorithm_id=algorithm,
            finding_sites=sites,
            measurements=measurements,
        )
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=finding,
            algorithm_id=algorithm,
            measurements=measurements,
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name="kneepain",
            manufacturer_name="kneepain (research software)",
            model_name=f"bundle {str(bundle['model_json_sha256'])[:16]}",
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
        imaging_measurements=[group],
    )
    report[0].ContentSequence.append(_disclaimer_item(document))
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="kneepain (research software)",
        is_complete=True,
    )
    sr.SeriesDescription = f"kneepain findings {side} knee (research)"
    scheme = Dataset()  # declares the private coding scheme of the kneepain concepts (PS3.3 C.12.1)
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "kneepain research concepts"
    scheme.CodingSchemeResponsibleOrganization = "kneepain project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _disclaimer_item(document: dict[str, Any]) -> Any:
    """TID 1500's Qualitative Evaluations container holding the not-for-clinical-use statement (TEXT)."""
    import highdicom as hd
    from highdicom.sr import RelationshipTypeValues

    text = hd.sr.TextContentItem(
        name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
        value=f"{NOT_CLINICAL}. {document['disclaimer']}",
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations"),
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = [text]
    return container


def secondary_capture(document: dict[str, Any], maps: dict[str, Any], k: int) -> Any | None:
    """Predict's overlay picture of knee ``k`` (CAM | MRI + CAM) as an RGB Secondary Capture."""
    import highdicom as hd

    from kneepain.cam.overlay import overlay_image

    side = KNEES[k]
    best = document["knees"][side]["best_slice"]
    if best["series_index"] is None:
        return None
    cams = maps["cams"]
    index = best["cache_index"]
    low, high = float(cams[:, index].min()), float(cams[:, index].max())
    spot = best["hot_spot"]
    title = [
        f"{side} knee: P(painful) {document[f'prob_{side}_painful']:.3f}; slice {index} "
        f"(InstanceNumber {best['instance_number']})",
        f"CAM | MRI + CAM. {NOT_CLINICAL}.",
    ]
    bgr = overlay_image(
        maps["results"][k].pixels[index],
        cams[k, index],
        low,
        high,
        (spot["cache_row"], spot["cache_col"]),
        title,
    )
    reference = _read_header(maps["headers"][k].files[best["series_index"]])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=np.ascontiguousarray(bgr[..., ::-1]),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="kneepain (research software)",
        patient_orientation=("P", "F"),  # the cache turn: columns run posterior, rows inferior
    )
    sc.SeriesDescription = f"kneepain overlay {side} knee (research)"
    sc.Laterality = LATERALITY[side]
    return sc


def knee_objects(
    document: dict[str, Any], maps: dict[str, Any], *, with_overlay: bool = True
) -> list[KneeObjects]:
    """The DICOM objects of both knees from a prediction document and ``predict_person``'s ``maps``."""
    import warnings

    made = []
    with warnings.catch_warnings():  # a source's one-component PatientName ("9114459") is the site's to fix
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        for k, side in enumerate(KNEES):
            made.append(_one_knee(document, maps, k, side, with_overlay))
    return made


def _one_knee(
    document: dict[str, Any], maps: dict[str, Any], k: int, side: str, with_overlay: bool
) -> KneeObjects:
    """The Parametric Map, the report and (optionally) the overlay of knee ``k``."""
    pm = parametric_map(document, maps, k)
    best = document["knees"][side]["best_slice"]
    head = maps["headers"][k]
    evidence = [_read_header(head.files[best["series_index"]])] if best["series_index"] is not None else []
    sr = structured_report(document, maps, k, evidence or [_read_header(head.files[0])])
    sc = secondary_capture(document, maps, k) if with_overlay else None
    source = _read_header(head.files[0])
    for dataset in (pm, sr, sc):
        if dataset is None:
            continue
        # viewers group and date series by these; the body part is the source's
        dataset.SeriesDate, dataset.SeriesTime = dataset.ContentDate, dataset.ContentTime
        if source.get("BodyPartExamined") and dataset is not sr:  # the SR Document Series has none
            dataset.BodyPartExamined = source.BodyPartExamined
    return KneeObjects(side, str(pm.StudyInstanceUID), pm, sr, sc)


def check_dicom_out(folder: Path) -> None:
    """Refuse a --dicom-out that is a file, or a non-empty folder other than an earlier export."""
    from kneepain.predict.checks import check_replaceable_dir

    check_replaceable_dir(folder, "--dicom-out", MANIFEST)


def write_objects(objects: list[KneeObjects], folder: Path) -> list[Path]:
    """Write every object as ``<side>_<kind>.dcm`` into ``folder``, replaced whole and atomically.

    Refuses a non-empty folder that is not an earlier export (no manifest.json).
    """
    from kneepain.fileio import atomic_dir, write_json

    folder = Path(folder)
    check_dicom_out(folder)
    written: list[str] = []
    manifest: list[dict[str, str]] = []
    with atomic_dir(folder) as tmp:
        for knee in objects:
            for kind, dataset in knee.named():
                name = f"{knee.side}_{kind}.dcm"
                dataset.save_as(tmp / name, enforce_file_format=True)
                written.append(name)
                manifest.append(
                    {
                        "file": name,
                        "side": knee.side,
                        "sop_class_uid": str(dataset.SOPClassUID),
                        "sop_instance_uid": str(dataset.SOPInstanceUID),
                        "study_uid": knee.study_uid,
                    }
                )
        write_json(tmp / MANIFEST, {"objects": manifest, "note": NOT_CLINICAL})
    return [folder / name for name in written]
