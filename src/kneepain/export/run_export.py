"""``kneepain cam RUN --dicom-out DIR``: a run's test subjects as DICOM objects, for a reader study in a PACS.

Each test subject is predicted from its source series (paths from the work folder's series table)
with the bundle of the fold that held it out, by ``predict_person``, the code that reproduces the
cache from DICOM; its maps become the same Parametric Map, findings SR and overlay as
``kneepain predict --dicom-out``. Written as ``DIR/<subject_id>/<side>_<kind>.dcm`` plus one
manifest.json, replacing DIR whole and atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kneepain.contracts import KNEES, WorkPaths, read_run_folder, read_test_predictions
from kneepain.export.dicom_objects import MANIFEST, NOT_CLINICAL, check_dicom_out, knee_objects


class RunExportError(ValueError):
    """The run cannot be exported: missing series table, series or bundle (the message names it)."""


def _series_folders(work: Path, subjects: list[str]) -> dict[str, dict[str, Path]]:
    """subject -> side -> source series folder, from the work folder's series table."""
    table_path = WorkPaths(work).series_table
    if not table_path.exists():
        raise RunExportError(
            f"{table_path}: series table not found (run kneepain ingest for this work folder)"
        )
    table = pd.read_csv(table_path, dtype={"subject_id": str})
    folders: dict[str, dict[str, Path]] = {}
    for subject in subjects:
        rows = table[table["subject_id"] == subject]
        sides = {str(r.side): Path(str(r.path)) for r in rows.itertuples()}
        missing = [side for side in KNEES if side not in sides or not sides[side].is_dir()]
        if missing:
            raise RunExportError(
                f"{table_path}: subject {subject} has no readable {' and '.join(missing)} knee series folder "
                f"({', '.join(str(sides.get(s)) for s in missing)}); the source DICOM must still be there"
            )
        folders[subject] = sides
    return folders


def export_run(run_dir: Path, out_dir: Path, on_subject: Any = None) -> dict[str, Any]:
    """Write every test subject's CAM maps, findings SR and overlay as DICOM under ``out_dir``.

    Returns the manifest (one entry per object). ``on_subject`` is called after each subject.
    """
    from kneepain.fileio import atomic_dir, remove_stale_temporaries, write_json
    from kneepain.predict import predict_person

    folder = read_run_folder(run_dir)
    test = read_test_predictions(folder.predictions_table)
    check_dicom_out(Path(out_dir))
    subjects = test["subject_id"].tolist()
    series = _series_folders(folder.work, subjects)
    remove_stale_temporaries(Path(out_dir).parent, names={Path(out_dir).name})  # a killed export's
    entries: list[dict[str, Any]] = []
    with atomic_dir(Path(out_dir)) as tmp:
        for row in test.itertuples():
            subject, fold = str(row.subject_id), int(row.fold)
            bundle = folder.path / f"fold_{fold:02d}" / "bundle"
            maps: dict[str, Any] = {}
            document = predict_person(
                series[subject]["left"], series[subject]["right"], bundle, allow_qc_fail=True, maps=maps
            )
            target = tmp / subject
            target.mkdir()
            for knee in knee_objects(document, maps):
                for kind, dataset in knee.named():
                    name = f"{subject}/{knee.side}_{kind}.dcm"
                    dataset.save_as(tmp / name, enforce_file_format=True)
                    entries.append(
                        {
                            "file": name,
                            "subject_id": subject,
                            "fold": fold,
                            "side": knee.side,
                            "prob_right_painful": document["prob_right_painful"],
                            "run_prob_right": float(row.prob_right),
                            "sop_instance_uid": str(dataset.SOPInstanceUID),
                            "study_uid": knee.study_uid,
                        }
                    )
            if on_subject is not None:
                on_subject()
        manifest = {"run": str(folder.path), "objects": entries, "note": NOT_CLINICAL}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def export_dicom_cli(run_dir: Path, out_dir: Path) -> None:
    """The ``cam --dicom-out`` command: export with a progress line; one-line refusals, exit code 2."""
    import typer

    from kneepain.console import console, fail, progress_counter, safe, stage
    from kneepain.contracts import RunFolderError
    from kneepain.predict import PredictInputError

    with stage("cam --dicom-out") as info:
        try:
            total = len(read_test_predictions(read_run_folder(run_dir).predictions_table))
            with progress_counter("DICOM export", total=total) as advance:
                manifest = export_run(run_dir, out_dir, on_subject=lambda: advance(1))
        except (RunExportError, RunFolderError, PredictInputError) as error:
            fail("cam", error)
            raise typer.Exit(2) from error
        info["subjects"] = total
        info["objects"] = len(manifest["objects"])
    console.print(f"cam: wrote {safe(out_dir)}")
