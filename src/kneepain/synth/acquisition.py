"""Acquisition: series geometry, the knee's pose in the field of view, bias field, intensity scale, noise.

Pose convention (also in docs/contracts.md): the joint centre (anatomical origin, in the PCL
plane) appears at image row ``(ROWS-1)/2 + shift_row_mm/PIXEL_MM`` and column
``(COLS-1)/2 + shift_col_mm/PIXEL_MM``; the anatomy is rotated about that point by
``rotation_deg``, positive = counter-clockwise as displayed (row 0 at the top, column 0 at the
left, anterior to the left). The PCL plane lies ``through_plane_mm`` further along increasing
slice index than the middle of the series, so ``centre_slice = round((n-1)/2 + through_plane_mm/3)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

ROWS, COLS = 444, 448
PIXEL_MM = 0.357
SLICE_MM = 3.0
RENDER_FACTOR = 2  # the phantom is rendered at half resolution and upsampled (speed)
FULL_SCALE = 650.0  # stored value of intensity 1.0 at scale 1 (OAI IW TSE values are mostly < 800)
MAX_VALUE = 4095  # 12 bits stored
SLICE_COUNTS = np.array([35, 36, 37, 38, 39, 40])
SLICE_COUNT_P = np.array([0.05, 0.15, 0.55, 0.15, 0.05, 0.05])


@dataclass(frozen=True)
class Pose:
    """The rigid placement of the knee in the series (see the module docstring for the convention)."""

    rotation_deg: float
    shift_row_mm: float
    shift_col_mm: float
    through_plane_mm: float
    n_slices: int

    @property
    def centre_slice(self) -> int:
        """Index (0-based, InstanceNumber order) of the slice nearest the PCL plane."""
        return int(np.round((self.n_slices - 1) / 2 + self.through_plane_mm / SLICE_MM))

    def slice_offset_mm(self, index: int) -> float:
        """Signed distance (mm) of slice ``index`` from the PCL plane along increasing index."""
        return (index - (self.n_slices - 1) / 2) * SLICE_MM - self.through_plane_mm


@dataclass(frozen=True)
class Acquisition:
    """Per-series signal settings."""

    scale: float  # multiplies FULL_SCALE: scanner/coil gain differs between knees
    noise_sd: float  # Rician noise sigma in stored units
    bias: tuple[float, ...]  # smooth multiplicative field coefficients


def draw_pose(rng: np.random.Generator) -> Pose:
    """Slice count, in-plane rotation/translation and through-plane shift of one knee series."""
    n = int(rng.choice(SLICE_COUNTS, p=SLICE_COUNT_P))
    return Pose(
        rotation_deg=float(np.round(rng.uniform(-6.0, 6.0), 3)),
        shift_row_mm=float(np.round(rng.uniform(-9.0, 9.0), 3)),
        shift_col_mm=float(np.round(rng.uniform(-9.0, 9.0), 3)),
        through_plane_mm=float(np.round(rng.uniform(-6.5, 6.5), 3)),
        n_slices=n,
    )


def draw_acquisition(rng: np.random.Generator) -> Acquisition:
    """Gain, noise level and bias field of one knee series."""
    scale = float(np.exp(rng.normal(0.0, 0.2)))
    noise = float(FULL_SCALE * scale * rng.uniform(0.02, 0.04))
    bias = tuple(float(v) for v in rng.normal(0.0, 0.12, 6))
    return Acquisition(scale=scale, noise_sd=noise, bias=bias)


def anatomical_grid(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical (y posterior, z superior) mm coordinates of every render-grid pixel centre."""
    f = RENDER_FACTOR
    rows = (np.arange(ROWS // f) * f + (f - 1) / 2 - (ROWS - 1) / 2) * PIXEL_MM - pose.shift_row_mm
    cols = (np.arange(COLS // f) * f + (f - 1) / 2 - (COLS - 1) / 2) * PIXEL_MM - pose.shift_col_mm
    dr, dc = np.meshgrid(rows.astype(np.float32), cols.astype(np.float32), indexing="ij")
    theta = np.radians(pose.rotation_deg)
    along_col = dc * np.cos(theta) - dr * np.sin(theta)
    along_row = dc * np.sin(theta) + dr * np.cos(theta)
    return along_col, -along_row


def bias_field(acq: Acquisition, shape: tuple[int, int]) -> np.ndarray:
    """Smooth multiplicative field (mean about 1) from a low-order polynomial, float32."""
    r = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    c = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    a = acq.bias
    return np.exp(a[0] * r + a[1] * c + a[2] * r * c + a[3] * r * r + a[4] * c * c).astype(np.float32)


def upsample(image: np.ndarray) -> np.ndarray:
    """Render grid to full matrix (bilinear, pixel centres aligned)."""
    return cv2.resize(image, (COLS, ROWS), interpolation=cv2.INTER_LINEAR)


def upsample_mask(mask: np.ndarray) -> np.ndarray:
    """Render grid labels to full matrix (each render pixel covers a 2 x 2 block)."""
    return cv2.resize(mask, (COLS, ROWS), interpolation=cv2.INTER_NEAREST)


_NOISE_BANK: np.ndarray | None = None
_NOISE_BANK_SIZE = 1 << 22


def _noise_bank() -> np.ndarray:
    """A fixed block of standard normal values, drawn once per process (see ``rician``)."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20240601).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)
    return _NOISE_BANK


def rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels (Rician), float32.

    Drawing 15 million fresh normals per series took most of the render time, so each slice's two
    noise channels are windows of a fixed bank of normals at offsets drawn from ``rng``: still
    deterministic per seed, independent between neighbouring pixels, and different per slice.
    """
    bank = _noise_bank()
    out = np.empty_like(signal)
    size = signal[0].size
    offsets = rng.integers(0, bank.size - size, (signal.shape[0], 2))
    for index, (a, b) in enumerate(offsets):
        real = signal[index] + sigma * bank[a : a + size].reshape(signal.shape[1:])
        imag = sigma * bank[b : b + size].reshape(signal.shape[1:])
        out[index] = np.sqrt(real * real + imag * imag)
    return out


def quantise(volume: np.ndarray) -> np.ndarray:
    """Round (half up) to unsigned 12-bit values stored as uint16."""
    rounded = np.add(volume, 0.5, dtype=np.float32)
    np.clip(rounded, 0, MAX_VALUE, out=rounded)
    return rounded.astype(np.uint16)
