"""Draw CAMs over MRI slices: figure PNGs like the paper's Figure 3, and raw layers for the review app.

A subject's two knees are drawn on one colour scale (the subject's min-max at the chosen slice),
so the painful knee's map and the other knee's map can be compared by eye.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kneepain.cam.compute import OVERLAY_DIR, CamOutputs
from kneepain.contracts import KNEES
from kneepain.fileio import atomic_path

COLORMAP = "jet"  # the paper's heat maps


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of one (h, w) CAM to the slice's (rows, cols)."""
    import cv2

    return cv2.resize(np.asarray(cam, dtype=np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``values`` linearly so ``low`` -> 0 and ``high`` -> 1, clipped; a flat map becomes all 0."""
    span = high - low
    if not np.isfinite(span) or span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / span, 0.0, 1.0).astype(np.float32)


def heat_rgba(cam: np.ndarray, low: float, high: float, size: tuple[int, int]) -> np.ndarray:
    """The CAM as an opaque RGBA heat-map image (uint8, rows x cols x 4), upsampled to ``size``."""
    from matplotlib import colormaps

    lut = (colormaps[COLORMAP](np.linspace(0.0, 1.0, 256)) * 255).round().astype(np.uint8)
    levels = (scale(upsample(cam, size), low, high) * 255).round().astype(np.uint8)
    return lut[levels]


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a grey (rows x cols) or RGBA (rows x cols x 4) uint8 image as PNG bytes."""
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)  # OpenCV writes BGR(A) order
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as PNG")
    return encoded.tobytes()


def save_figure(target: Path, mri: np.ndarray, cam: np.ndarray, low: float, high: float, title: str) -> None:
    """Write one figure PNG: the heat map alone, and the MRI in grey with the heat map on top, colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = scale(upsample(cam, mri.shape), low, high)
    figure, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.4), dpi=100, layout="constrained")
    left.imshow(heat, cmap=COLORMAP, vmin=0, vmax=1)
    left.set_title("CAM")
    right.imshow(mri, cmap="gray", vmin=0, vmax=255)
    right.imshow(heat, cmap=COLORMAP, vmin=0, vmax=1, alpha=0.45)
    right.set_title("MRI + CAM")
    for axis in (left, right):
        axis.set_axis_off()
    scale_bar = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=COLORMAP)
    figure.colorbar(scale_bar, ax=right, fraction=0.046, label="CAM (subject min-max)")  # opaque bar
    figure.suptitle(title, fontsize=9)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def write_overlays(outputs: CamOutputs, out_dir: Path | None = None) -> list[Path]:
    """Write ``overlays/<ID>_<side>.png`` for the painful and the other knee of every subject.

    Both use the subject's best slice (highest mean CAM of the painful knee) and one colour scale.
    """
    out_dir = out_dir or outputs.run_dir / "cam" / OVERLAY_DIR
    written = []
    for position, row in enumerate(outputs.index.itertuples(index=False)):
        k = int(row.best_slice)
        maps = np.asarray(outputs.cams[position, :, k])
        low, high = float(maps.min()), float(maps.max())
        for knee, side in enumerate(KNEES):
            role = "painful" if side == row.painful_side else "other"
            title = f"{row.subject_id} {side} knee ({role}), slice {k}"
            target = out_dir / f"{row.subject_id}_{side}.png"
            save_figure(
                target, np.asarray(outputs.cache[int(row.cache_row), knee, k]), maps[knee], low, high, title
            )
            written.append(target)
    return written
