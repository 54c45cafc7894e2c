"""Cohort orchestration: subjects in a process pool, streamed to disk, then index, clinical and truth files.

Each worker synthesises one subject from (seed, index) alone and writes its series and masks
straight into the output tree, returning only small records, so memory stays flat in N and the
result does not depend on the number of workers. The whole tree is built in a temporary folder
that replaces ``out`` only when complete.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kneepain import __version__
from kneepain.console import progress, stage
from kneepain.fileio import atomic_dir, remove_stale_temporaries, write_csv, write_json, write_text
from kneepain.synth import acquisition as acq
from kneepain.synth import challenge, difficulty
from kneepain.synth.anatomy import KneeAnatomy
from kneepain.synth.artifacts import draw_artifact
from kneepain.synth.clinical_writer import write_clinical
from kneepain.synth.dicom_writer import SeriesInfo, write_series
from kneepain.synth.lesions import effusion_mm, place_lesions
from kneepain.synth.population import (
    PROPORTIONS,
    Person,
    draw_person,
    expected_exclusion,
    in_model_b,
    subject_ids,
    subject_streams,
)
from kneepain.synth.render import render_coronal, render_knee
from kneepain.synth.truth_writer import write_mask_npz
from kneepain.workers import die_with_parent, kill_point

VISIT = "00m"
INDEX_FILE = "contents.csv"
INDEX_COLUMNS = ["Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription"]
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
KNEE_X_MM = {"right": -95.0, "left": 95.0}  # LPS: the right knee lies toward -x
KNEE_Z_MM = -450.0
SUBJECT_COLUMNS = [
    "subject_id", "label", "pain_right", "pain_left", "womac_right", "womac_left", "kl_right", "kl_left",
    "age", "sex", "bmi", "has_left_series", "has_right_series", "model_a", "model_b", "expected_exclusion",
    "propensity", "pain_latent", "burden_right", "burden_left", "category",
]  # fmt: skip
KNEE_COLUMNS = [
    "subject_id", "side", "series_path", "n_slices", "centre_slice", "rotation_deg", "shift_row_mm",
    "shift_col_mm", "through_plane_mm", "artifact", "lesion_burden", "lesions", "intensity_scale",
    "mean_intensity", "n_slices_planned", "mask_path", "bone_scale",
]  # fmt: skip


@dataclass
class SubjectResult:
    """What one worker hands back: small records only."""

    person: Person
    index_rows: list[list[str]] = field(default_factory=list)
    knee_rows: list[dict[str, object]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)


def knee_anatomy(person: Person, rng: np.random.Generator) -> KneeAnatomy:
    """Body-size parameters: bones scale with height and sex, soft tissue with BMI and sex."""
    bone = (person.height_mm / 1700.0) * (1.0 if person.sex == 1 else 0.97) * rng.normal(1.0, 0.02)
    fat = 4.0 + 0.7 * (person.bmi - 20.0) + (3.0 if person.sex == 2 else 0.0) + rng.normal(0, 1.5)
    return KneeAnatomy(
        bone_scale=float(np.clip(bone, 0.85, 1.15)),
        fat_mm=float(np.clip(fat, 3.0, 24.0)),
        leg_scale=float(np.clip(1.0 + 0.01 * (person.bmi - 28.0) + rng.normal(0, 0.03), 0.85, 1.15)),
        cartilage_scale=float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.2)),
    )


def synthesize_subject(task: tuple[int, int, str, int, str, str, str]) -> SubjectResult:
    """Draw, render and write one subject (both knees' series and masks); return its records."""
    seed, index, subject_id, count, proportions_name, root, phantom = task
    proportions = PROPORTIONS[proportions_name]
    person = draw_person(seed, index, subject_id, count, proportions)
    _, rng = subject_streams(seed, index)
    anatomy = knee_anatomy(person, rng)
    crng = challenge.challenge_rng(seed, index) if phantom == "challenge" else None
    if crng is not None:
        anatomy = challenge.widen_anatomy(anatomy, crng)
    series_numbers = [int(n) for n in 10_000_000 + rng.choice(9_000_000, size=4, replace=False)]
    result = SubjectResult(person=person)
    for k, side in enumerate(("left", "right")):
        pose = acq.draw_pose(rng)
        signal = acq.draw_acquisition(rng)
        knee, knee_shape = None, anatomy
        if crng is not None:
            knee = challenge.draw_knee(crng)
            knee_shape = challenge.knee_anatomy(anatomy, knee)
            pose = challenge.place_series(pose, knee, side)
        lesions = place_lesions(rng, person.knees[side].severities, knee_shape)
        if knee is not None:
            knee_shape = challenge.knee_anatomy(anatomy, knee, effusion_mm(lesions) * knee.effusion_scale)
        artifact = draw_artifact(rng, proportions.artifact_per_knee, pose.n_slices, pose.centre_slice)
        barcode = f"0166{int(rng.integers(0, 10**8)):08d}"
        if not person.knees[side].has_series:
            continue
        image = render_knee(rng, knee_shape, pose, signal, lesions, side, artifact, knee, crng)
        sagittal = _sagittal_info(person, side, barcode, series_numbers[2 * k], pose.n_slices, seed)
        coronal = dataclasses.replace(
            sagittal,
            series_description=f"COR_IW_TSE_{side.upper()}",
            series_number=series_numbers[2 * k + 1],
            orientation=CORONAL,
            first_position=(KNEE_X_MM[side] - 64.0, -4.5, KNEE_Z_MM + 64.0),
            slice_step=(0.0, 3.0, 0.0),
            pixel_mm=0.5,
        )
        images = Path(root) / "images" / VISIT
        date_folder = Path(person.cohort_folder) / subject_id / person.study_date
        for info, pixels, kept in (
            (sagittal, image.pixels, image.kept),
            (coronal, render_coronal(rng, signal.scale), None),
        ):
            folder = date_folder / f"{info.series_number:08d}"
            write_series(images / folder, pixels, info, kept)
            # The index's RIGHT study description carries a trailing space, as in early OAI releases.
            study = info.study_description + (" " if side == "right" else "")
            result.index_rows.append(
                [folder.as_posix(), subject_id, person.study_date, barcode, study, info.series_description]
            )
        mask_rel = Path("masks") / f"{subject_id}_{side}.npz"
        write_mask_npz(Path(root) / "truth" / mask_rel, image.mask, image.kept)
        extra: dict[str, object] = {}
        if knee is not None and image.vessels is not None:
            vessel_rel = Path("vessels") / f"{subject_id}_{side}.npz"
            write_mask_npz(
                Path(root) / "truth" / vessel_rel, image.vessels, image.kept, challenge.VESSEL_LABELS
            )
            extra = challenge.truth_columns(knee, pose, side, knee_shape, image, vessel_rel.as_posix())
        result.means[side] = float(image.pixels.mean())
        result.artifacts[side] = artifact.kind if artifact else ""
        result.knee_rows.append(
            {
                "subject_id": subject_id,
                "side": side,
                "series_path": (Path(VISIT) / date_folder / f"{sagittal.series_number:08d}").as_posix(),
                "n_slices": len(image.kept),
                "centre_slice": image.kept.index(pose.centre_slice),
                "rotation_deg": pose.rotation_deg,
                "shift_row_mm": pose.shift_row_mm,
                "shift_col_mm": pose.shift_col_mm,
                "through_plane_mm": pose.through_plane_mm,
                "artifact": result.artifacts[side],
                "lesion_burden": round(person.knees[side].burden, 4),
                "lesions": ";".join(f"{les.code}:{les.severity:.3f}" for les in lesions),
                "intensity_scale": round(signal.scale, 4),
                "mean_intensity": round(result.means[side], 3),
                "n_slices_planned": pose.n_slices,
                "mask_path": mask_rel.as_posix(),
                "bone_scale": round(knee_shape.bone_scale, 4),
                **extra,
            }
        )
    return result


def _sagittal_info(
    person: Person, side: str, barcode: str, number: int, n_slices: int, seed: int
) -> SeriesInfo:
    """Tags and geometry of a knee's SAG_IW_TSE series (see docs/contracts.md for the convention)."""
    return SeriesInfo(
        patient_id=person.subject_id,
        study_date=person.study_date,
        accession=barcode,
        study_description=f"OAI^MR^ENROLLMENT^{side.upper()}",
        series_description=f"SAG_IW_TSE_{side.upper()}",
        series_number=number,
        laterality=side[0].upper(),
        orientation=SAGITTAL,
        first_position=(
            KNEE_X_MM[side] + acq.SLICE_MM * (n_slices - 1) / 2,
            -(acq.COLS - 1) / 2 * acq.PIXEL_MM,
            KNEE_Z_MM + (acq.ROWS - 1) / 2 * acq.PIXEL_MM,
        ),
        slice_step=(-acq.SLICE_MM, 0.0, 0.0),
        pixel_mm=acq.PIXEL_MM,
        slice_mm=acq.SLICE_MM,
        uid_seed=f"kneepain-synth-{seed}",
    )


def _single_threaded(parent: int) -> None:
    """Pool worker set-up: end with the parent process (a killed synth leaves no orphans), and one
    OpenCV thread (the workers already use every core between them)."""
    import cv2

    die_with_parent(parent)

    cv2.setNumThreads(1)


def _subject_row(result: SubjectResult) -> dict[str, object]:
    p = result.person
    exclusion = expected_exclusion(p, result.artifacts)
    model_a = exclusion == ""
    r, le = p.knees["right"], p.knees["left"]
    return {
        "subject_id": p.subject_id,
        "label": p.label,
        "pain_right": int(r.painful),
        "pain_left": int(le.painful),
        "womac_right": r.womac,
        "womac_left": le.womac,
        "kl_right": r.kl,
        "kl_left": le.kl,
        "age": p.age,
        "sex": "female" if p.sex == 2 else "male",
        "bmi": round(p.bmi, 2),
        "has_left_series": int(le.has_series),
        "has_right_series": int(r.has_series),
        "model_a": int(model_a),
        "model_b": int(in_model_b(p, model_a)),
        "expected_exclusion": exclusion,
        "propensity": round(p.propensity, 4),
        "pain_latent": round(p.pain_latent, 4),
        "burden_right": round(r.burden, 4),
        "burden_left": round(le.burden, 4),
        "category": p.category,
    }


def _check_output(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier synth output (it would be deleted)."""
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "truth" / "summary.json").exists())
    ):
        raise FileExistsError(
            f"{out}: exists and is not a kneepain synth cohort; choose an empty or new folder"
        )


def generate_cohort(
    out: Path,
    subjects: int,
    seed: int,
    *,
    workers: int | None = None,
    proportions: str = "training",
    phantom: str = "default",
) -> dict:
    """Write a synthetic OAI-format cohort of ``subjects`` participants to ``out``; return the summary.

    ``proportions`` is ``"training"`` (mostly unilateral pain) or ``"paper"`` (the paper's funnel).
    ``phantom`` is ``"default"`` or ``"challenge"`` (kneepain.synth.challenge: fat-suppressed
    contrast, large effusions, the PCL off the knee's middle, ...).
    The same arguments give byte-identical files whatever ``workers`` is.
    """
    out = Path(out)
    if subjects < 1:
        raise ValueError(f"subjects must be at least 1, got {subjects}")
    if proportions not in PROPORTIONS:
        raise ValueError(f"proportions must be one of {sorted(PROPORTIONS)}, got {proportions!r}")
    if phantom not in challenge.PHANTOMS:
        raise ValueError(f"phantom must be one of {list(challenge.PHANTOMS)}, got {phantom!r}")
    _check_output(out)
    workers = max(1, min(workers or os.cpu_count() or 1, subjects))
    ids = subject_ids(seed, subjects)
    # A killed earlier synth of the same folder left its half-written temporary beside it.
    remove_stale_temporaries(Path(out).parent, names={Path(out).name})
    with stage("synth") as info, atomic_dir(out) as tmp:
        tasks = [(seed, i, ids[i], subjects, proportions, str(tmp), phantom) for i in range(subjects)]
        index_rows: list[list[str]] = []
        subject_rows: list[dict[str, object]] = []
        knee_rows: list[dict[str, object]] = []
        people: list[Person] = []
        shortcut: list[tuple[int, float, float]] = []
        if workers == 1:
            results = map(synthesize_subject, tasks)
            executor = None
        else:
            # "spawn", not "fork": forking a process that already runs library threads (OpenCV,
            # SimpleITK in a test session) can deadlock the children.
            executor = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_single_threaded,
                initargs=(os.getpid(),),
            )
            results = executor.map(synthesize_subject, tasks, chunksize=1)
        try:
            for result in progress(results, "synth: subjects", total=subjects):
                index_rows.extend(result.index_rows)
                knee_rows.extend(result.knee_rows)
                row = _subject_row(result)
                subject_rows.append(row)
                people.append(result.person)
                if row["label"] is not None and len(result.means) == 2:
                    shortcut.append((int(row["label"]), result.means["right"], result.means["left"]))
                kill_point("synth:subject")
        finally:
            if executor is not None:
                executor.shutdown()

        _write_index(tmp / "images" / VISIT / INDEX_FILE, index_rows)
        write_clinical(tmp / "clinical", people)
        subjects_frame = pd.DataFrame(subject_rows, columns=SUBJECT_COLUMNS)
        subjects_frame["label"] = subjects_frame["label"].astype("Int64")
        write_csv(tmp / "truth" / "subjects.csv", subjects_frame)
        columns = KNEE_COLUMNS + (challenge.TRUTH_COLUMNS if phantom == "challenge" else [])
        write_csv(tmp / "truth" / "knees.csv", pd.DataFrame(knee_rows, columns=columns))
        summary = _summary(seed, subjects, proportions, subjects_frame, knee_rows, shortcut)
        if phantom == "challenge":
            summary["phantom"] = challenge.summary(knee_rows)
        write_json(tmp / "truth" / "summary.json", summary)
        info["subjects"] = subjects
        info["knee series"] = len(knee_rows)
        info["oracle AUC"] = _fmt(summary["oracle_auc"])
        info["shortcut AUC"] = _fmt(summary["shortcut_auc"])
        info["written to"] = str(out)
    return summary


def _fmt(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _write_index(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _summary(
    seed: int,
    subjects: int,
    proportions: str,
    frame: pd.DataFrame,
    knee_rows: list[dict[str, object]],
    shortcut: list[tuple[int, float, float]],
) -> dict:
    labelled = frame[frame["label"].notna()]
    oracle = difficulty.oracle_auc(labelled["label"].to_numpy(int), labelled["propensity"].to_numpy(float))
    short = None
    if shortcut:
        arr = np.array(shortcut)
        short = difficulty.shortcut_auc(arr[:, 0], arr[:, 1], arr[:, 2])
    artifacts = pd.Series([row["artifact"] for row in knee_rows if row["artifact"]], dtype=str)
    return {
        "generator": "kneepain.synth",
        "version": __version__,
        "seed": seed,
        "proportions": proportions,
        "counts": {
            "subjects": subjects,
            "unilateral": int(frame["category"].eq("unilateral").sum()),
            "bilateral": int(frame["category"].eq("bilateral").sum()),
            "no_pain": int(frame["category"].eq("none").sum()),
            "label_right": int(labelled["label"].eq(1).sum()),
            "label_left": int(labelled["label"].eq(0).sum()),
            "knee_series": len(knee_rows),
            "missing_series": int((frame["has_left_series"].eq(0) | frame["has_right_series"].eq(0)).sum()),
            "artifacts": {str(k): int(v) for k, v in artifacts.value_counts().sort_index().items()},
            "model_a": int(frame["model_a"].sum()),
            "model_b": int(frame["model_b"].sum()),
        },
        "oracle_auc": oracle,
        "shortcut_auc": short,
        "shortcut_strength": difficulty.strength(short),
        "targets": {
            "oracle_auc": list(difficulty.ORACLE_TARGET),
            "shortcut_auc_max": difficulty.SHORTCUT_MAX,
        },
    }
