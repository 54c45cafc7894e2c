"""Contact sheets: every slice of one written knee series in one PNG, lesion mask outlines optional."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneepain.fileio import atomic_path


def read_series_pixels(folder: Path) -> np.ndarray:
    """Pixels (slices, rows, cols) of the DICOM files in ``folder``, sorted by InstanceNumber."""
    import pydicom

    datasets = [pydicom.dcmread(path) for path in sorted(folder.iterdir()) if path.is_file()]
    datasets.sort(key=lambda ds: int(ds.InstanceNumber))
    return np.stack([ds.pixel_array for ds in datasets])


def write_contact_sheet(
    pixels: np.ndarray,
    out: Path,
    *,
    title: str = "",
    mask: np.ndarray | None = None,
    centre: int | None = None,
    columns: int = 8,
) -> Path:
    """Render all slices in a grid (shared grey window) and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = pixels.shape[0]
    rows = int(np.ceil(n / columns))
    high = float(np.percentile(pixels, 99.5))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), facecolor="black")
    colours = ["#ff4040", "#ffd000", "#40ff40", "#40c0ff", "#ff40ff"]
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= n:
            continue
        ax.imshow(pixels[index], cmap="gray", vmin=0, vmax=high, interpolation="nearest")
        if mask is not None and mask[index].any():
            for code, colour in enumerate(colours, start=1):
                if (mask[index] == code).any():
                    ax.contour(mask[index] == code, levels=[0.5], colors=colour, linewidths=0.6)
        label = f"{index}" + (" centre" if index == centre else "")
        ax.set_title(label, color="white", fontsize=8, pad=2)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=55, facecolor="black")
    plt.close(fig)
    return out


def sheet_from_cohort(cohort: Path, subject_id: str, side: str, out: Path, *, masks: bool = False) -> Path:
    """Contact sheet of one knee of a synth cohort, titled with its truth (lesions, centre, artifact).

    Example: ``sheet_from_cohort(Path("/tmp/s"), "9149030", "left", Path("docs/synth_knee.png"))``.
    """
    import pandas as pd

    from kneepain.synth.truth_writer import read_mask_npz

    knees = pd.read_csv(
        cohort / "truth" / "knees.csv", dtype={"subject_id": str, "lesions": str, "artifact": str}
    )
    match = knees[(knees["subject_id"] == subject_id) & (knees["side"] == side)]
    if match.empty:
        raise ValueError(f"{cohort / 'truth' / 'knees.csv'}: no {side} knee series for subject {subject_id}")
    row = match.iloc[0]
    pixels = read_series_pixels(cohort / "images" / row["series_path"])
    mask = read_mask_npz(cohort / "truth" / row["mask_path"])[0] if masks else None
    lesions = f"lesions {row['lesions']}" if isinstance(row["lesions"], str) else "no lesions"
    artifact = row["artifact"] if isinstance(row["artifact"], str) else "no artifact"
    centre = int(row["centre_slice"])
    title = f"{subject_id} {side} knee - {lesions} - {artifact} - truth centre slice {centre}"
    return write_contact_sheet(pixels, out, title=title, mask=mask, centre=centre)
