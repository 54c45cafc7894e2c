"""Test helpers: work folders. :func:`synthetic_work` makes one the real way (synth, ingest,
preprocess); :func:`make_work` writes a small, learnable one in the shape of docs/contracts.md:

cohort.csv + preprocess/cache.npy + index.csv + config.json. Every subject's painful knee holds a
bright blob over a few consecutive slices at a random place; the other knee holds only noise
(a share ``flip`` of subjects has the blob in the wrong knee, so the task is learnable but not
perfect: the best AUC is about 1 - flip). The cache is ``size`` x ``size`` (not 224) to stay tiny.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kneepain.contracts import COHORT_COLUMNS, N_SLICES

if TYPE_CHECKING:
    from kneepain.preprocess.config import PreprocessConfig


def make_work(
    root: Path,
    n: int = 60,
    size: int = 32,
    seed: int = 0,
    *,
    flip: float = 0.1,
    one_class: bool = False,
    config: dict | None = None,
) -> Path:
    """Write a work folder under ``root`` and return it."""
    rng = np.random.default_rng(seed)
    work = Path(root)
    (work / "ingest").mkdir(parents=True, exist_ok=True)
    (work / "preprocess").mkdir(parents=True, exist_ok=True)
    labels = np.zeros(n, dtype=int) if one_class else rng.permutation(np.arange(n) % 2)
    ids = [f"{9000000 + 17 * i:07d}" for i in range(n)]
    cache = np.lib.format.open_memmap(
        work / "preprocess" / "cache.npy", mode="w+", dtype=np.uint8, shape=(n, 2, N_SLICES, size, size)
    )
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        block = rng.normal(70, 25, size=(2, N_SLICES, size, size))
        knee = labels[i] if rng.random() >= flip else 1 - labels[i]
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        first = rng.integers(0, N_SLICES - 4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
        block[knee, first : first + 4] += 150 * blob
        cache[i] = np.clip(block, 0, 255).astype(np.uint8)
    cache.flush()
    del cache
    cohort = pd.DataFrame(
        {
            "subject_id": ids,
            "label": labels,
            "pain_right": labels,
            "pain_left": 1 - labels,
            "womac_right": labels * 5,
            "womac_left": (1 - labels) * 5,
            "kl_right": rng.integers(0, 5, n),
            "kl_left": rng.integers(0, 5, n),
            "age": rng.normal(60, 9, n).round(1),
            "sex": rng.choice(["female", "male"], n),
            "bmi": rng.normal(28.5, 4.5, n).round(1),
            "has_left_series": True,
            "has_right_series": True,
            "model_a": True,
            "model_b": np.arange(n) % 3 != 0,
            "exclusion": "",
        }
    )[COHORT_COLUMNS]
    cohort.to_csv(work / "ingest" / "cohort.csv", index=False)
    index = pd.DataFrame(
        {
            "row": np.arange(n),
            "subject_id": ids,
            "centre_left": 18,
            "centre_right": 18,
            "qc_pass": True,
            "qc_reason": "",
        }
    )
    index.to_csv(work / "preprocess" / "index.csv", index=False)
    stored = config or {"register": True, "image_size": size, "crop_mm": 105.0, "package_version": "test"}
    (work / "preprocess" / "config.json").write_text(json.dumps(stored))
    return work


def synthetic_work(
    root: Path, subjects: int, seed: int, *, workers: int, config: PreprocessConfig | None = None
) -> Path:
    """A synthetic cohort of ``subjects`` made under ``root/cohort``, ingested and preprocessed
    (registered; with ``config``, else the default) into ``root/work``; returns the work folder."""
    from kneepain.ingest.pipeline import run_ingest
    from kneepain.preprocess import run_preprocess
    from kneepain.synth.cohort import generate_cohort

    generate_cohort(root / "cohort", subjects, seed=seed, workers=workers)
    work = root / "work"
    run_ingest(root / "cohort" / "images", root / "cohort" / "clinical", work, workers=workers)
    run_preprocess(work, workers=workers, config=config)
    return work
