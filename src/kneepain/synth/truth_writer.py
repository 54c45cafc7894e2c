"""Truth files beside the tree: lesion mask archives that are byte-identical for the same seed."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from kneepain.synth.lesions import MASK_LABELS

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def write_mask_npz(
    path: Path, mask: np.ndarray, kept: list[int], labels: dict[int, str] | None = None
) -> None:
    """Save a lesion label volume as ``.npz`` (arrays ``mask``, ``labels``, ``kept``).

    ``numpy.savez_compressed`` stamps each member with the current time, which breaks
    byte-identical output; this writes the same format with a fixed timestamp. ``labels`` holds
    strings ``"<code>:<name>"`` (the lesion codes unless ``labels`` names others, e.g. the challenge
    phantom's vessel masks); ``kept`` the original slice index of each mask slice.
    """
    arrays = {
        "mask": np.ascontiguousarray(mask, dtype=np.uint8),
        "labels": np.array([f"{code}:{name}" for code, name in (labels or MASK_LABELS).items()]),
        "kept": np.asarray(kept, dtype=np.int16),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def read_mask_npz(path: Path) -> tuple[np.ndarray, dict[int, str], list[int]]:
    """Read a mask archive back: (mask, {code: name}, kept slice indices)."""
    with np.load(path, allow_pickle=False) as data:
        labels = {int(item.split(":")[0]): item.split(":", 1)[1] for item in data["labels"]}
        return data["mask"], labels, [int(i) for i in data["kept"]]
