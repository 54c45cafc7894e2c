"""Every parameter that shapes the slice cache, stored with it and checked on reuse."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kneepain import __version__
from kneepain.contracts import HALF_SLICES, IMAGE_SIZE

# 2: affine fit (rigid part kept), unbiased template; 3: anatomical template frame;
# 4: high_contrast against the knee's brightest tissue, centre search from the best-fitting start slice;
# 5: anatomical frame from the plateaus' cartilage-to-bone edge (any contrast, fat-suppressed too);
# 6: foreign_object against the series' noise (void_snr), not its tissue (fat-suppressed knees too);
# 7: motion's ghosting score on the anatomy's edges (ghost_blur_mm), not the noise's;
# 8: knees registered to the template in the group's mean frame, the anatomical frame applied
#    after (frame_pose), so a steep mean tibial slope does not start every fit degrees away
CONFIG_VERSION = 8
# Stored with the cache, not part of the configuration: the package version, the subject count and
# the content hash of the merged cache (what a training run records to notice a rebuilt cache).
INFORMATIVE_KEYS = ("package_version", "subjects", "content_sha256")


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the preprocessing; two caches are interchangeable only if these are equal.

    ``template_sha256`` pins the registration template (``template.npy`` beside the cache); it is
    filled in when the template is built or loaded.
    """

    register: bool = True
    method: str = "ecc"  # registration: "ecc" (OpenCV) or "sitk" (SimpleITK), see registration.py
    registration_motion: str = "affine"  # ECC fit: "affine" (its rigid part is the pose) or "rigid"
    crop_mm: float = 105.0  # the paper's 294 px at 0.357 mm
    image_size: int = IMAGE_SIZE
    half_slices: int = HALF_SLICES
    template_field_mm: int = 80  # template side (mm, 1 mm pixels): the joint, not the BMI-dependent skin
    knee_pose_half: int = 5  # the knee's pose is the median over offsets -5..5
    slice_tolerance_mm: float = 3.0  # a slice's own pose is kept within this distance of the knee's
    slice_tolerance_deg: float = 3.0
    pose_smoothing: int = 7  # running median of slice poses over this many neighbours (1 = none)
    crop_centre_mm: tuple[float, float] = (0.0, 0.0)  # crop centre in the canonical frame (row, col)
    intensity_percentile: float = 99.5  # per knee: this percentile of the crop maps to 1.0
    no_register_first_slice: int = 7  # 0-based: the paper's ablation used slices 8-30 (1-based)
    template_subjects: int = 40  # knee pairs (first ids) the template is averaged over
    template_frame: str = "anatomical"  # "anatomical" (tibial landmarks) or "group_mean" (template.py)
    centre_search: int = 4  # slices either side of the initial guess searched by stack matching
    qc: dict[str, float] = field(
        default_factory=lambda: {
            "min_correlation": 0.35,
            "max_rotation_deg": 25.0,
            "max_shift_mm": 30.0,
            "max_fallback_slices": 16,
            "ghosting": 0.2,  # ghost / anatomy edge energy, quality.ghosting_score
            "ghost_blur_mm": 1.0,  # the anatomy's edges, not the noise's (quality.ghosting_score)
            "blank_std_ratio": 0.15,
            "gap_ratio": 1.5,
            "bright_ratio": 2.0,  # x the knee's brightest tissue (fluid), quality.check_contrast
            "bright_area_mm2": 50.0,
            "dark_area_mm2": 40.0,
            "void_snr": 2.5,  # x the noise SD: no measurable signal (quality.check_contrast)
            "void_width_mm": 9.0,
        }
    )
    template_sha256: str = ""
    # The anatomical frame in the template's (group mean) frame: rotation (deg), shift row and col
    # (mm); each knee's registered pose is composed with it before the crop. A function of the
    # template (landmarks.find_anatomical_frame), filled in with template_sha256. Zero before
    # version 8, whose templates were themselves resampled into the anatomical frame.
    frame_pose: tuple[float, float, float] = (0.0, 0.0, 0.0)
    version: int = CONFIG_VERSION

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        data = asdict(self)
        data["crop_centre_mm"] = list(self.crop_centre_mm)
        data["frame_pose"] = list(self.frame_pose)
        data["package_version"] = __version__
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreprocessConfig:
        """Inverse of to_json (ignores the informative keys: package version, subject count)."""
        data = {k: v for k, v in data.items() if k not in INFORMATIVE_KEYS}
        data["crop_centre_mm"] = tuple(data["crop_centre_mm"])
        data["frame_pose"] = tuple(data.get("frame_pose", (0.0, 0.0, 0.0)))
        if int(data.get("version", 1)) < 2:
            data.setdefault("registration_motion", "rigid")  # what version 1 caches were made with
        if int(data.get("version", 1)) < 3:
            data.setdefault("template_frame", "group_mean")  # what version 1-2 caches were made with
        return cls(**data)

    def fingerprint(self) -> dict[str, Any]:
        """The parts that must match for a cache to be reused (all but the package version)."""
        data = self.to_json()
        data.pop("package_version")
        return json.loads(json.dumps(data, sort_keys=True))


def array_sha256(array: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes)."""
    digest = hashlib.sha256()
    digest.update(str((array.shape, str(array.dtype))).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_config(path: Path) -> PreprocessConfig:
    """Read a stored config.json, with a clear error naming the file when it is unreadable."""
    try:
        return PreprocessConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise CacheMismatchError(f"{path}: unreadable preprocessing configuration ({error})") from error


class CacheMismatchError(RuntimeError):
    """A cache (or part of one) written with another configuration, or corrupt; never reused."""
