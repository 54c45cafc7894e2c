"""What the network reads, written once: cache slices (uint8) as float in [0, 1] at the input size.

Training batches, evaluation, CAMs, predict and the benchmarks all turn slices into the network's
input through :func:`to_input` (or :func:`resize` for a tensor already scaled), so the transform a
bundle was trained with is the one it is used with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

CACHE_SCALE = 255.0  # uint8 cache value / 255 -> [0, 1] (the paper: "normalized between 0 and 1")


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample the last two axes of ``x`` (..., H, W) to ``size`` x ``size`` (as is when equal)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    lead = x.shape[:-2]
    flat = functional.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=(size, size), mode="area")
    return flat.reshape(*lead, size, size)


def to_input(block: np.ndarray, input_size: int) -> torch.Tensor:
    """uint8 cache block (..., H, W) -> float32 tensor in [0, 1] at ``input_size`` (area downsampling)."""
    x = torch.from_numpy(np.ascontiguousarray(block)).float().div_(CACHE_SCALE)
    return resize(x, input_size)


@dataclass(frozen=True)
class InputSpec:
    """A network's input: ``window`` slices per knee, ``size`` x ``size`` pixels, cache value / 255."""

    size: int
    window: int

    def tensor(self, block: np.ndarray) -> torch.Tensor:
        """The network's input of a uint8 cache block (..., H, W)."""
        return to_input(block, self.size)
