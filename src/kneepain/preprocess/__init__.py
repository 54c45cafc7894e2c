"""Preprocessing: centre slice, rigid registration, crop, intensity, quality check, slice cache.

Modules: ``series_io`` (read a knee series, lateral = +k), ``centre_slice`` (PCL slice detection and
manual list), ``registration`` (rigid 2D in mm; ECC vs SimpleITK), ``template`` (per-offset
templates from the cohort), ``crop`` (105 mm crop, 224 px, uint8 scaling), ``quality`` (QC flags and
manual list), ``knee`` (one knee / one pair), ``cache`` (parts, shards, merge, config check),
``pipeline`` (the stage over a process pool), ``measure`` / ``masks`` / ``sheet`` (evaluation against
synthetic truth and the contact sheet; never used by the stage). See docs/preprocess.md.
"""

from __future__ import annotations

from kneepain.preprocess.cache import check_cache, load_templates
from kneepain.preprocess.config import CacheMismatchError, PreprocessConfig
from kneepain.preprocess.knee import preprocess_pair
from kneepain.preprocess.masks import mask_to_cache
from kneepain.preprocess.pipeline import PreprocessInputError, run_preprocess

__all__ = [
    "CacheMismatchError",
    "PreprocessConfig",
    "PreprocessInputError",
    "check_cache",
    "load_templates",
    "mask_to_cache",
    "preprocess_pair",
    "run_preprocess",
]
