"""``predict_person``: one person's two knee series and a bundle -> which knee hurts, and where.

Steps (each timed): load the bundle (model, preprocessing record, registration templates);
read (headers checked for a mismatched pair, then both series); preprocess (the bundle's own
centre slice, registration, crop and intensity: ``kneepain.preprocess.knee``, the code that built
the training cache); network (one pass for the probability and the CAMs, resized to the model's
input exactly as training resized the cache); outputs (best slice and hot spot per knee, mapped
back to scanner millimetres, overlays, JSON and summary, written atomically).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kneepain import __version__
from kneepain.contracts import BUNDLE_META, BUNDLE_WEIGHTS, KNEES
from kneepain.predict.checks import (
    PredictInputError,
    SeriesHeaders,
    check_pair,
    check_replaceable_dir,
    read_series_headers,
)
from kneepain.protocol import protocol_warnings, slice_spacing_mm

PREDICTION_FILE = "prediction.json"
SUMMARY_FILE = "summary.txt"
OVERLAY_FILE = "overlay_{side}.png"
FORMAT = 1
PATIENT_FRAME = "DICOM patient coordinates (LPS: +x patient's left, +y posterior, +z head), mm"
DISCLAIMER = (
    "Research software, not a medical device and not for clinical use. A model trained on "
    "synthetic data (kneepain synth) says nothing about real knees; even a model trained on real "
    "data has only the validity its evaluation showed."
)


class PredictQCError(PredictInputError):
    """The knees were read and preprocessed, but a knee failed the quality check (see the message)."""


@dataclass
class LoadedBundle:
    """A bundle ready for predict: the prepared model and what its preprocessing needs."""

    path: Path
    model: Any  # SiameseNet, prepared for inference
    meta: dict[str, Any]
    config: Any  # PreprocessConfig
    templates: np.ndarray | None
    input_size: int


def load_predict_bundle(bundle_dir: str | Path) -> LoadedBundle:
    """Load a bundle and check that its preprocessing and input size can be reproduced here.

    Raises PredictInputError naming the bundle file: missing or broken bundle, an unusable
    preprocessing record, templates missing or not matching, a slice window the model does not
    have, or an input size larger than the cache's (training only ever shrinks the cache).
    """
    from kneepain.model.bundle import Bundle, BundleError
    from kneepain.predict.network import prepare_for_inference
    from kneepain.preprocess.config import PreprocessConfig

    path = Path(bundle_dir)
    meta_path = path / BUNDLE_META
    try:
        bundle = Bundle.load(path)
        templates = bundle.templates()
    except BundleError as error:
        raise PredictInputError(f"bundle {error}") from error
    model, meta, record = bundle.model, bundle.meta, bundle.preprocessing
    if not record:
        raise PredictInputError(f"{meta_path}: no preprocessing record; predict cannot reproduce the input")
    try:
        config = PreprocessConfig.from_json(dict(record))
    except (KeyError, TypeError, ValueError) as error:
        raise PredictInputError(
            f"{meta_path}: preprocessing record cannot be used by this kneepain {__version__} ({error})"
        ) from error
    window = 2 * config.half_slices + 1
    input_size = bundle.input.size
    problems = []
    if model.config.n_locations != window:
        problems.append(
            f"the model has {model.config.n_locations} slice locations, preprocessing gives {window}"
        )
    if input_size > config.image_size:
        problems.append(
            f"input size {input_size} is larger than the preprocessed {config.image_size} px "
            "(training only ever shrinks the cache)"
        )
    if config.register and config.method not in ("ecc", "sitk"):
        problems.append(f"unknown registration method {config.method!r}")
    expected = (window, config.template_field_mm, config.template_field_mm)
    if templates is not None and tuple(templates.shape) != expected:
        problems.append(f"templates have shape {tuple(templates.shape)}, preprocessing needs {expected}")
    if problems:
        raise PredictInputError(f"{meta_path}: cannot be satisfied: " + "; ".join(problems))
    return LoadedBundle(path, prepare_for_inference(model), meta, config, templates, input_size)


def _read_pair(
    left_dir: Path, right_dir: Path, window: int
) -> tuple[list[SeriesHeaders], list[Any], list[str]]:
    """Headers checked as a pair, then both volumes read (lateral = +k), cross-checked with the headers."""
    from kneepain.preprocess.series_io import SeriesError, read_knee_series

    headers = [read_series_headers(left_dir), read_series_headers(right_dir)]
    warnings = check_pair(headers[0], headers[1], window)
    volumes = []
    for head, side in zip(headers, KNEES, strict=True):
        try:
            volume = read_knee_series(head.folder, side)
        except SeriesError as error:
            raise PredictInputError(str(error)) from error
        if volume.n_slices != head.n_slices:
            raise PredictInputError(
                f"{head.folder}: {head.n_slices} DICOM headers but {volume.n_slices} readable slices"
            )
        volumes.append(volume)
    return headers, volumes, warnings


def _hot_spot(
    cams: np.ndarray, pixels_size: int, knee_result: Any, headers: SeriesHeaders, config: Any
) -> dict[str, Any]:
    """Best slice (highest mean CAM) of one knee, its hot spot in cache pixels and in scanner mm."""
    from kneepain.cam.compute import best_slice
    from kneepain.cam.overlay import upsample
    from kneepain.predict.geometry import CropGrid, SliceGeometry, cache_to_patient
    from kneepain.preprocess.registration import Pose

    k = best_slice(cams)
    up = upsample(cams[k], (pixels_size, pixels_size))
    row, col = (int(v) for v in np.unravel_index(int(np.argmax(up)), up.shape))
    series_index = knee_result.slice_series[k] if k < len(knee_result.slice_series) else None
    entry: dict[str, Any] = {
        "cache_index": k,
        "offset": k - config.half_slices,
        "series_index": series_index,
        "instance_number": None,
        "file": None,
        "cam_mean": float(cams[k].mean()),
        "registration_pose": None,
        "hot_spot": {
            "cache_row": row,
            "cache_col": col,
            "cam_value": float(up[row, col]),
            "image_row": None,
            "image_col": None,
            "patient_mm": None,
            "coordinate_system": PATIENT_FRAME,
            "note": "",
        },
    }
    spot = entry["hot_spot"]
    if series_index is None:
        spot["note"] = "the best slice lies outside the series (no image there)"
        return entry
    entry["instance_number"] = headers.instance_numbers[series_index]
    entry["file"] = headers.files[series_index].name
    if config.register:
        registration = knee_result.registrations[k] if k < len(knee_result.registrations) else None
        if registration is None:
            spot["note"] = "the best slice has no registration (blank or missing image); position unknown"
            return entry
        pose = registration.pose
    else:
        pose = Pose()
    entry["registration_pose"] = {
        "rotation_deg": pose.rotation_deg,
        "shift_row_mm": pose.shift_row_mm,
        "shift_col_mm": pose.shift_col_mm,
    }
    geometry = SliceGeometry(
        position=headers.positions[series_index],
        orientation=headers.orientation,
        spacing_rc_mm=headers.spacing_rc_mm,
        rows=headers.rows,
        columns=headers.columns,
    )
    grid = CropGrid(config.crop_mm, config.image_size, tuple(config.crop_centre_mm))
    patient, stored = cache_to_patient((row, col), grid, pose, geometry)
    spot["image_row"], spot["image_col"] = round(stored[0], 2), round(stored[1], 2)
    spot["patient_mm"] = [round(float(v), 2) for v in patient]
    inside = 0 <= stored[0] <= headers.rows - 1 and 0 <= stored[1] <= headers.columns - 1
    if not inside:
        spot["note"] = "the hot spot lies outside the stored image (the crop reaches past its edge)"
    return entry


def _bundle_identity(loaded: LoadedBundle) -> dict[str, Any]:
    """Which bundle answered: its folder, model.json hash, weights size, fold and training record."""
    meta_bytes = (loaded.path / BUNDLE_META).read_bytes()
    return {
        "path": str(loaded.path.resolve()),
        "model_json_sha256": hashlib.sha256(meta_bytes).hexdigest(),
        "weights_bytes": (loaded.path / BUNDLE_WEIGHTS).stat().st_size,
        "architecture": loaded.meta.get("architecture"),
        "input_size": loaded.input_size,
        "fold": loaded.meta.get("fold"),
        "cohort_model": loaded.meta.get("cohort_model"),
        "package_version": loaded.meta.get("package_version"),
        "template_sha256": loaded.config.template_sha256 or None,
    }


def predict_person(
    left_dir: str | Path,
    right_dir: str | Path,
    bundle_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    precision: str = "auto",
    allow_qc_fail: bool = False,
    maps: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict which knee of one person is painful, with maps; returns the prediction document.

    ``left_dir`` / ``right_dir``: the two DICOM series folders (any file names). ``bundle_dir``:
    a model bundle (``fold_XX/bundle``). ``out_dir``: write prediction.json, summary.txt and
    overlay_<side>.png there atomically (None: write nothing). ``precision``: ``auto`` (bf16
    where the CPU computes it natively, else fp32; the choice and its reason are recorded), ``fp32``
    or ``bf16`` (autocast). A knee failing the quality check raises PredictQCError unless
    ``allow_qc_fail`` (then the document says so). Every refusal is a PredictInputError.
    ``maps``: when given, filled with the CAMs, per-knee preprocessing results, headers and
    preprocessing config (``kneepain.export`` turns them into DICOM objects).
    """
    import torch

    from kneepain.hardware import resolve_precision
    from kneepain.model.inputs import to_input
    from kneepain.preprocess.knee import knee_info, preprocess_volume

    try:
        choice = resolve_precision(precision, torch.device("cpu"))
    except ValueError as error:
        raise PredictInputError(str(error)) from error
    left_dir, right_dir = Path(left_dir), Path(right_dir)
    if out_dir is not None:
        from kneepain.fileio import remove_stale_temporaries

        check_replaceable_dir(Path(out_dir), "--out", PREDICTION_FILE)
        remove_stale_temporaries(Path(out_dir).parent, names={Path(out_dir).name})  # a killed run's
    timing: dict[str, float] = {}
    cpu_timing: dict[str, float] = {}  # process CPU seconds: what a shared machine cannot inflate
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        timing[name], cpu_timing[name] = round(now - clock, 4), round(cpu_now - cpu_clock, 4)
        clock, cpu_clock = now, cpu_now

    start, cpu_start = clock, cpu_clock
    loaded = load_predict_bundle(bundle_dir)
    config = loaded.config
    lap("load_bundle")
    window = 2 * config.half_slices + 1
    headers, volumes, warnings = _read_pair(left_dir, right_dir, window)
    trained = loaded.meta.get("acquisition")  # absent in bundles made before the protocol check
    for side, head in zip(KNEES, headers, strict=True):
        spacing = slice_spacing_mm(head.positions, head.normal)
        warnings += protocol_warnings(trained, side, spacing, head.spacing_rc_mm[0], window)
    lap("read")
    results = [preprocess_volume(volume, config, loaded.templates) for volume in volumes]
    pixels = np.stack([r.pixels for r in results])
    lap("preprocess")
    failed = [r for r in results if not r.qc.passed]
    if failed and not allow_qc_fail:
        reasons = "; ".join(
            f"{h.folder} ({r.side}): {r.qc.reason_text()}"
            for h, r in zip(headers, results, strict=True)
            if not r.qc.passed
        )
        raise PredictQCError(
            f"quality check failed: {reasons}. Such knees are left out of training, so the model "
            "has not learnt from them; pass --allow-qc-fail to predict anyway"
        )
    from kneepain.predict.network import run_network

    x = to_input(pixels[None], loaded.input_size)
    probs, cams = run_network(loaded.model, x, choice.precision)
    if maps is not None:
        maps.update(cams=cams[0], results=results, headers=headers, config=config)
    lap("network")

    prob_left, prob_right = float(probs[0, 0]), float(probs[0, 1])
    knees: dict[str, Any] = {}
    for k, (side, result, head) in enumerate(zip(KNEES, results, headers, strict=True)):
        info = knee_info(result)
        centre = info["centre_slice"]
        knees[side] = {
            "folder": str(head.folder.resolve()),
            "side_source": head.side_source,
            "series_description": head.description,
            "n_slices": info["n_slices"],
            "qc_pass": info["qc_pass"],
            "qc_reason": info["qc_reason"],
            "qc_flags": info["flags"],
            "centre_slice": centre,
            "centre_instance_number": None if centre is None else head.instance_numbers[centre],
            "centre_method": info["centre_method"],
            "intensity_scale": info["intensity_scale"],
            "best_slice": _hot_spot(cams[0, k], config.image_size, result, head, config),
        }
    qc_pass = all(r.qc.passed for r in results)
    if not qc_pass:
        warnings.append(
            "QUALITY CHECK FAILED for " + ", ".join(r.side for r in failed) + ": prediction unreliable"
        )
    document: dict[str, Any] = {
        "format": FORMAT,
        "disclaimer": DISCLAIMER,
        "clinical_use": False,
        "patient_id": headers[0].patient_id or headers[1].patient_id,
        "prob_right_painful": prob_right,
        "prob_left_painful": prob_left,
        "predicted_painful_side": "right" if prob_right >= 0.5 else "left",
        "qc_pass": qc_pass,
        "warnings": warnings,
        "knees": knees,
        "precision": choice.precision,
        "precision_choice": choice.to_json(),
        "torch_threads": _threads(),
        "bundle": _bundle_identity(loaded),
        "package_version": __version__,
        "timing_s": timing,
        "cpu_s": cpu_timing,
        "outputs": {},
    }
    if out_dir is None:
        lap("outputs")
        _finish(document, start, cpu_start)
        return document
    from kneepain.fileio import atomic_dir, write_json, write_text

    with atomic_dir(Path(out_dir)) as tmp:
        _write_overlays(tmp, document, pixels, cams[0])
        lap("outputs")
        _finish(document, start, cpu_start)
        write_json(tmp / PREDICTION_FILE, document)
        write_text(tmp / SUMMARY_FILE, document["summary"] + "\n")
    return document


def _finish(document: dict[str, Any], start: float, cpu_start: float) -> None:
    """Total time and the human summary, the last things the document gets."""
    document["timing_s"]["total"] = round(time.perf_counter() - start, 4)
    document["cpu_s"]["total"] = round(time.process_time() - cpu_start, 4)
    document["summary"] = format_summary(document)


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _write_overlays(folder: Path, document: dict[str, Any], pixels: np.ndarray, cams: np.ndarray) -> None:
    """overlay_<side>.png of both knees at their own best slices, on one colour scale."""
    from kneepain.cam.overlay import overlay_image, save_overlay

    best = [document["knees"][side]["best_slice"] for side in KNEES]
    maps = [cams[k, entry["cache_index"]] for k, entry in enumerate(best)]
    low, high = float(min(m.min() for m in maps)), float(max(m.max() for m in maps))
    for k, (side, entry) in enumerate(zip(KNEES, best, strict=True)):
        name = OVERLAY_FILE.format(side=side)
        spot = entry["hot_spot"]
        where = (
            ""
            if spot["patient_mm"] is None
            else " at (" + ", ".join(f"{v:.1f}" for v in spot["patient_mm"]) + ") mm"
        )
        title = [
            f"{document['patient_id'] or ''} {side} knee: P(painful) {document[f'prob_{side}_painful']:.3f}; "
            f"slice {entry['cache_index']} (InstanceNumber {entry['instance_number']}); hot spot{where}",
            "CAM | MRI + CAM (one colour scale for both knees). Research model, NOT for clinical use.",
        ]
        image = overlay_image(
            pixels[k, entry["cache_index"]], maps[k], low, high, (spot["cache_row"], spot["cache_col"]), title
        )
        save_overlay(folder / name, image)
        document["outputs"][f"overlay_{side}"] = name
    document["outputs"]["prediction"] = PREDICTION_FILE
    document["outputs"]["summary"] = SUMMARY_FILE


def format_summary(document: dict[str, Any]) -> str:
    """The short human summary (printed, and summary.txt)."""
    right, left = document["prob_right_painful"], document["prob_left_painful"]
    side = document["predicted_painful_side"]
    lines = [
        f"kneepain predict {document['package_version']}: PatientID {document['patient_id'] or '(none)'}",
        f"  P(right knee painful) = {right:.3f}   P(left knee painful) = {left:.3f}   -> {side.upper()} knee",
    ]
    for knee in KNEES:
        entry = document["knees"][knee]
        best = entry["best_slice"]
        spot = best["hot_spot"]
        where = (
            "(" + ", ".join(f"{v:.1f}" for v in spot["patient_mm"]) + ") mm LPS"
            if spot["patient_mm"] is not None
            else f"unknown ({spot['note']})"
        )
        qc = "QC pass" if entry["qc_pass"] else f"QC FAIL ({entry['qc_reason']})"
        lines.append(
            f"  {knee:5s}: {qc}; centre slice {entry['centre_slice']} ({entry['centre_method']}); "
            f"highest-CAM slice {best['cache_index']} (offset {best['offset']:+d}, "
            f"InstanceNumber {best['instance_number']}); hot spot {where}"
        )
    lines += [f"  warning: {w}" for w in document["warnings"]]
    timing = document["timing_s"]
    steps = ", ".join(f"{k} {v:.2f}" for k, v in timing.items() if k != "total")
    lines.append(
        f"  time (s): {steps}; total {timing.get('total', float('nan')):.2f} ({document['precision']})"
    )
    lines.append(f"  NOT A CLINICAL TOOL. {DISCLAIMER}")
    return "\n".join(lines)
