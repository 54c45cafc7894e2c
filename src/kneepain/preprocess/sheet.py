"""Contact sheet of one subject's 23 registered slice pairs from the cache (for people, docs/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneepain.contracts import HALF_SLICES, N_SLICES, WorkPaths, open_cache, read_cache_index


def contact_sheet(work: Path, subject_id: str | None = None, columns: int = 4, tile: int = 160) -> np.ndarray:
    """A uint8 image: for each offset -11..+11 the left and right knee side by side, labelled.

    ``subject_id`` defaults to the first subject that passed QC.
    """
    import cv2

    paths = WorkPaths(Path(work))
    cache = open_cache(paths.cache_array)
    index = read_cache_index(paths.cache_index)
    if subject_id is None:
        passed = index[index["qc_pass"].astype(bool)]
        if passed.empty:
            raise ValueError(f"{paths.cache_index}: no subject passed QC")
        subject_id = str(passed.iloc[0]["subject_id"])
    rows = index[index["subject_id"] == subject_id]
    if rows.empty:
        raise ValueError(f"{paths.cache_index}: subject {subject_id} is not in the cache")
    pixels = cache[int(rows.iloc[0]["row"])]
    gap = 4
    cell_w, cell_h = 2 * tile + gap, tile + 18
    grid_rows = -(-N_SLICES // columns)
    sheet = np.zeros((grid_rows * (cell_h + gap), columns * (cell_w + gap)), np.uint8)
    for k in range(N_SLICES):
        r, c = divmod(k, columns)
        y, x = r * (cell_h + gap), c * (cell_w + gap)
        for knee in range(2):
            small = cv2.resize(np.asarray(pixels[knee, k]), (tile, tile), interpolation=cv2.INTER_AREA)
            sheet[y + 18 : y + 18 + tile, x + knee * (tile + gap) : x + knee * (tile + gap) + tile] = small
        label = f"{k - HALF_SLICES:+d}  L | R"
        cv2.putText(sheet, label, (x + 2, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
    return sheet


def write_contact_sheet(work: Path, out: Path, subject_id: str | None = None) -> Path:
    """Write the contact sheet as PNG (atomically)."""
    import cv2

    from kneepain import fileio

    image = contact_sheet(work, subject_id)
    with fileio.atomic_path(out) as tmp:
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise RuntimeError(f"{out}: PNG encoding failed")
        tmp.write_bytes(encoded.tobytes())
    return Path(out)
