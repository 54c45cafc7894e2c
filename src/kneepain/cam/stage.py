"""The `kneepain cam` stage: CAMs, overlays and localization for one run, written as one folder.

Everything goes to a temporary folder first and replaces ``RUN/cam`` only when complete, so a
failed re-run leaves the previous CAMs (and the review app using them) intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kneepain.cam.compute import (
    CAM_DIR,
    BundleLoader,
    CamInputError,
    compute_cams,
    read_cam_outputs,
    read_run,
    write_cam_outputs,
)
from kneepain.cam.gallery import write_gallery
from kneepain.cam.localization import (
    MaskSource,
    folder_mask_source,
    lesion_table,
    localize,
    summarize,
    truth_mask_source,
)
from kneepain.cam.overlay import GALLERY_DIR, write_overlays
from kneepain.console import console, progress_counter, safe
from kneepain.fileio import atomic_dir, markdown_table, write_csv, write_json, write_text

LOCALIZATION_TABLE = "localization.csv"
LOCALIZATION_SUMMARY = "localization.json"
LESION_TABLE = "lesion_table"  # .csv and .md


def choose_masks(truth: Path | None, cache_masks: Path | None, work: Path) -> tuple[MaskSource | None, str]:
    """The truth-mask source for localization and, when there is none, the reason on record."""
    if cache_masks is not None:
        if not cache_masks.is_dir():
            raise CamInputError(f"{cache_masks}: cache-space mask folder not found")
        return folder_mask_source(cache_masks), ""
    if truth is None:
        return None, "no truth given (real data has none): only the area is measured"
    if not (truth / "masks").is_dir():
        raise CamInputError(f"{truth / 'masks'}: truth mask folder not found")
    try:
        return truth_mask_source(truth, work), ""
    except CamInputError as error:
        return None, str(error)


def run_cam_stage(
    run_dir: Path,
    truth: Path | None = None,
    cache_masks: Path | None = None,
    loader: BundleLoader | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    overlays: bool = True,
    tolerance_cells: int = 1,
    precision: str = "auto",
) -> dict[str, Any]:
    """Compute, draw and measure the CAMs of a run into ``RUN/cam``; return the localization summary."""
    run = read_run(run_dir)
    masks, skipped = choose_masks(truth, cache_masks, run.work)
    with progress_counter("CAMs", total=len(run.subjects)) as advance:
        result = compute_cams(run, loader, batch_size, device, on_batch=advance, precision=precision)
    with atomic_dir(run_dir / CAM_DIR) as tmp:
        write_cam_outputs(tmp, result)
        outputs = read_cam_outputs(run_dir, tmp)
        if overlays:
            write_overlays(outputs, tmp / "overlays")
        table = localize(outputs, masks, tolerance_cells)
        summary = summarize(table, result.meta["backbone"], result.meta["map_size"])
        summary.update(run_id=run.run_id, tolerance_cells=tolerance_cells, localization_skipped=skipped)
        if overlays:
            write_gallery(outputs, table, masks, tmp / GALLERY_DIR, tolerance_cells)
        write_csv(tmp / LOCALIZATION_TABLE, table)
        write_json(tmp / LOCALIZATION_SUMMARY, summary)
        if masks is not None:
            lesions = lesion_table(table)
            write_csv(tmp / f"{LESION_TABLE}.csv", lesions)
            write_text(tmp / f"{LESION_TABLE}.md", markdown_table(lesions))
    if skipped:
        console.print(f"[yellow]localization not measured: {safe(skipped)}")
    return summary
