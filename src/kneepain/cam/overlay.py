"""Draw CAMs over MRI slices: figure PNGs like the paper's Figure 3, and raw layers for the review app.

A subject's two knees are drawn on one colour scale (the subject's min-max at the chosen slice),
so the painful knee's map and the other knee's map can be compared by eye. The figure (CAM alone |
MRI + CAM with the hot spot | colour bar) is drawn straight into pixels with OpenCV: a matplotlib
figure took 0.7-3 s per PNG on the 2-core machine, which made `cam` on 229 subjects take 5 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    heat = upsample(cam, mri.shape)
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    save_overlay(target, overlay_image(mri, cam, low, high, (int(row), int(col)), [title]))


PANEL = 448  # display size of each 224 px cache slice (x2)
MARGIN = 12
TITLE_HEIGHT = 48  # one title line at a readable size; each further line adds TITLE_LINE
TITLE_LINE = 30
BAR_WIDTH = 18
HEAT_ALPHA = 0.45  # as cam.overlay: the heat map over the MRI
OVERLAY_WIDTH = 3 * MARGIN + 2 * PANEL + MARGIN + BAR_WIDTH + 40  # pixels: 2 panels, bar and its labels


def overlay_layout() -> dict[str, str]:
    """Width (pixels) of an :func:`overlay_image` and the share of it its two panels fill."""
    return {"width_px": str(OVERLAY_WIDTH), "plot_fraction": str(round(2 * PANEL / OVERLAY_WIDTH, 3))}


def heat_bgr(cam: np.ndarray, low: float, high: float, size: int) -> np.ndarray:
    """The CAM upsampled (bilinear) to ``size`` and coloured with the jet map (BGR uint8)."""
    import cv2

    up = cv2.resize(np.asarray(cam, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    span = high - low
    level = np.zeros_like(up) if not np.isfinite(span) or span <= 0 else np.clip((up - low) / span, 0, 1)
    return cv2.applyColorMap(np.round(level * 255).astype(np.uint8), cv2.COLORMAP_JET)


def overlay_image(
    mri: np.ndarray, cam: np.ndarray, low: float, high: float, hot_spot: tuple[int, int], title: list[str]
) -> np.ndarray:
    """BGR image: CAM | MRI (uint8 cache slice) + CAM with a cross at ``hot_spot`` (cache row, col) | bar."""
    import cv2

    scale = PANEL / mri.shape[0]
    heat = heat_bgr(cam, low, high, PANEL)
    grey = cv2.resize(np.asarray(mri, np.uint8), (PANEL, PANEL), interpolation=cv2.INTER_LINEAR)
    blended = cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 1 - HEAT_ALPHA, heat, HEAT_ALPHA, 0)
    centre = (round((hot_spot[1] + 0.5) * scale), round((hot_spot[0] + 0.5) * scale))
    cv2.drawMarker(blended, centre, (0, 0, 0), cv2.MARKER_CROSS, 30, 5)
    cv2.drawMarker(blended, centre, (255, 255, 255), cv2.MARKER_CROSS, 30, 2)
    bar_levels = np.linspace(255, 0, PANEL).astype(np.uint8)[:, None].repeat(BAR_WIDTH, axis=1)
    bar = cv2.applyColorMap(bar_levels, cv2.COLORMAP_JET)
    lines = title[:2]
    top = TITLE_HEIGHT + TITLE_LINE * (len(lines) - 1)
    canvas = np.full((top + PANEL + MARGIN, OVERLAY_WIDTH, 3), 255, np.uint8)
    canvas[top : top + PANEL, MARGIN : MARGIN + PANEL] = heat
    left = 2 * MARGIN + PANEL
    canvas[top : top + PANEL, left : left + PANEL] = blended
    bar_left = left + PANEL + 2 * MARGIN
    canvas[top : top + PANEL, bar_left : bar_left + BAR_WIDTH] = bar
    font = cv2.FONT_HERSHEY_SIMPLEX
    for value, y in (("1", top + 14), ("0.5", top + PANEL // 2 + 6), ("0", top + PANEL)):
        cv2.putText(canvas, value, (bar_left + BAR_WIDTH + 4, y), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i, line in enumerate(lines):
        weight = 2 if i == 0 else 1
        natural = cv2.getTextSize(line, font, 1.0, weight)[0][0]
        size = min(0.85, (OVERLAY_WIDTH - 2 * MARGIN) / max(natural, 1))  # long titles shrink to fit
        cv2.putText(canvas, line, (MARGIN, 32 + TITLE_LINE * i), font, size, (0, 0, 0), weight, cv2.LINE_AA)
    return canvas


JPEG_QUALITY = 88  # gallery figures: a seventh of the PNG's bytes, no visible loss at report size


def save_overlay(target: Path, image: np.ndarray) -> None:
    """Write a BGR image atomically, as PNG or, for a ``.jpg`` target, as JPEG."""
    import cv2

    jpeg = target.suffix.lower() in (".jpg", ".jpeg")
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else []
    ok, encoded = cv2.imencode(".jpg" if jpeg else ".png", image, params)
    if not ok:
        raise ValueError(f"{target}: could not encode the image")
    with atomic_path(target) as tmp:
        tmp.write_bytes(encoded.tobytes())


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


# --- the report's gallery: one figure per case, both knees and every hot-spot rule -------------------

CASE_PANEL = 384  # display size of each cache slice in a case figure
CASE_TITLE = 70  # two title lines above each panel
TITLE_SCALE = 0.8  # OpenCV font scale of panel titles (shrunk where a title would overflow its panel)
CASE_GAP = 14
CASE_BAR = 16
OUTLINE_BGR = (80, 255, 80)  # the true lesion outline: bright green, apart from every jet colour
GALLERY_DIR = "gallery"
GALLERY_TABLE = "gallery.csv"
GALLERY_CORRECT, GALLERY_WRONG = 4, 4  # cases shown of each kind


@dataclass(frozen=True)
class CasePanel:
    """One slice of a case figure: the MRI, the map over it, a hot spot and the true lesion outline.

    ``spot`` is a (row, col) position in cache pixels; ``window`` the pointing-game reach around it
    in pixels (a mask pixel inside the square counts as a hit); ``outline`` the lesion mask of this
    slice (cache pixels) or None when there is no truth.
    """

    title: tuple[str, str]
    mri: np.ndarray
    cam: np.ndarray
    low: float
    high: float
    spot: tuple[float, float] | None = None
    window: tuple[float, float] = (0.0, 0.0)
    outline: np.ndarray | None = None


def _panel_pixels(panel: CasePanel) -> np.ndarray:
    """The panel as BGR pixels: grey MRI, heat map blended over it, outline, spot and its hit window."""
    import cv2

    size = CASE_PANEL
    factor = size / panel.mri.shape[0]
    grey = cv2.resize(np.asarray(panel.mri, np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
    heat = heat_bgr(panel.cam, panel.low, panel.high, size)
    image = cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 1 - HEAT_ALPHA, heat, HEAT_ALPHA, 0)
    if panel.outline is not None and np.any(panel.outline):
        mask = cv2.resize(
            np.asarray(panel.outline > 0, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST
        )
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.drawContours(image, contours, -1, OUTLINE_BGR, 2, cv2.LINE_AA)
    if panel.spot is not None and all(np.isfinite(panel.spot)):
        row, col = ((v + 0.5) * factor for v in panel.spot)
        centre = (round(col), round(row))
        reach = [max(r * factor, 3.0) for r in panel.window]
        corner0 = (round(col - reach[1]), round(row - reach[0]))
        corner1 = (round(col + reach[1]), round(row + reach[0]))
        cv2.rectangle(image, corner0, corner1, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.rectangle(image, corner0, corner1, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.drawMarker(image, centre, (0, 0, 0), cv2.MARKER_CROSS, 30, 5)
        cv2.drawMarker(image, centre, (255, 255, 255), cv2.MARKER_CROSS, 30, 2)
    return image


def case_image(panels: list[CasePanel], columns: int = 2) -> tuple[np.ndarray, float]:
    """The panels in a grid (``columns`` wide) with their titles and one colour bar; BGR pixels.

    Returns the image and the share of its width the panels fill (the rest is margin and bar).
    """
    import cv2

    rows = -(-len(panels) // columns)
    cell_w, cell_h = CASE_PANEL + CASE_GAP, CASE_TITLE + CASE_PANEL + CASE_GAP
    bar_left = CASE_GAP + columns * cell_w
    width = bar_left + CASE_BAR + 44
    canvas = np.full((rows * cell_h + CASE_GAP, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, panel in enumerate(panels):
        top, left = CASE_GAP + (i // columns) * cell_h, CASE_GAP + (i % columns) * cell_w
        for line, text in enumerate(panel.title):
            weight = 2 if line == 0 else 1
            text_width = cv2.getTextSize(text, font, 1.0, weight)[0][0]
            size = min(TITLE_SCALE, CASE_PANEL / max(text_width, 1))  # as large as fits the panel's width
            cv2.putText(
                canvas, text, (left, top + 24 + 30 * line), font, size, (0, 0, 0), weight, cv2.LINE_AA
            )
        canvas[top + CASE_TITLE : top + CASE_TITLE + CASE_PANEL, left : left + CASE_PANEL] = _panel_pixels(
            panel
        )
    bar_top = CASE_GAP + CASE_TITLE
    levels = np.linspace(255, 0, CASE_PANEL).astype(np.uint8)[:, None].repeat(CASE_BAR, axis=1)
    canvas[bar_top : bar_top + CASE_PANEL, bar_left : bar_left + CASE_BAR] = cv2.applyColorMap(
        levels, cv2.COLORMAP_JET
    )
    for text, y in (("high", bar_top + 12), ("low", bar_top + CASE_PANEL)):
        cv2.putText(canvas, text, (bar_left + CASE_BAR + 4, y), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas, round(columns * CASE_PANEL / width, 3)
