"""The challenge phantom (`kneepain synth --phantom challenge`): a knee that tests the preprocessing rules.

The default phantom was built to be learnable and was, by construction, easy for the rules fitted
on it: fat bright, fluid a thin film, the PCL exactly at the middle of the knee's medial-lateral
extent, one knee shape. Real SAG_IW_TSE knees (docs/reference: oai-formats.md) differ in each of
these, so this phantom draws, per knee:

- fat-suppressed intermediate-weighted contrast: fat (subcutaneous, Hoffa's pad, marrow) dark,
  fluid bright, cartilage intermediate, ligaments, menisci and cortex dark;
- bright popliteal vessels (artery and vein, flow-related signal drawn per knee);
- physiological joint fluid in every knee (pain-free ones too) and effusions up to large
  suprapatellar distensions (tens of millilitres);
- partial volume across the 3 mm slice (each slice is the mean of two sections 1.5 mm apart) and a
  stronger, finer tissue texture;
- the PCL offset from the middle of the knee's medial-lateral extent by up to 3.5 slices either way;
- knee sizes and posterior tibial slopes over the adult range.

Everything here is drawn from a generator of its own (seeded from the cohort seed and the subject),
so the default phantom's random stream, and hence its bytes, are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from kneepain.synth.acquisition import SLICE_MM, Pose
from kneepain.synth.anatomy import KneeAnatomy, tissue_contrast

PHANTOMS = ("default", "challenge")

# Fat-suppressed IW TSE. Intensity (fraction of full scale; VESSEL is replaced per knee, flow): fluid
# and effusion are the brightest tissues, fat and marrow dark. Texture strength (relative): marrow
# trabeculae, muscle fibres, inhomogeneous fluid.
FAT_SUPPRESSED_INTENSITY, FAT_SUPPRESSED_TEXTURE = tissue_contrast(
    [0.01, 0.32, 0.11, 0.27, 0.11, 0.13, 0.80, 0.86, 0.92, 0.05, 0.06, 0.48, 0.07, 0.24, 0.15, 0.04, 0.48],
    [0.0, 0.10, 0.18, 0.18, 0.18, 0.18, 0.10, 0.06, 0.08, 0.10, 0.10, 0.10, 0.12, 0.25, 0.30, 0.0, 0.10],
)
PARTIAL_VOLUME_MM = (-0.75, 0.75)  # two sections per 3 mm slice (their mean)
MAX_PCL_OFFSET_MM = 10.5  # 3.5 slices of 3 mm


@dataclass(frozen=True)
class ChallengeKnee:
    """What the challenge phantom drew for one knee (recorded in truth/knees.csv)."""

    pcl_offset_mm: float  # PCL plane minus the middle of the knee's medial-lateral extent (lateral +)
    fluid_mm: float  # normal fluid film in the recesses
    tibial_slope_deg: float
    vessel_intensity: float  # popliteal artery and vein, fraction of full scale
    effusion_scale: float  # multiplies the severity-driven distension (large suprapatellar effusions)


def challenge_rng(seed: int, index: int) -> np.random.Generator:
    """The challenge phantom's own stream for one subject (the default phantom's streams are untouched)."""
    return np.random.default_rng([seed, index, 19])


def widen_anatomy(anatomy: KneeAnatomy, rng: np.random.Generator) -> KneeAnatomy:
    """Knee size over the adult range: the person's bone scale spread further (0.80-1.22)."""
    bone = anatomy.bone_scale * float(rng.normal(1.0, 0.05))
    return replace(anatomy, bone_scale=float(np.clip(bone, 0.80, 1.22)))


def draw_knee(rng: np.random.Generator) -> ChallengeKnee:
    """Draw one knee's challenge parameters."""
    return ChallengeKnee(
        pcl_offset_mm=float(np.round(rng.uniform(-MAX_PCL_OFFSET_MM, MAX_PCL_OFFSET_MM), 3)),
        fluid_mm=float(np.round(np.clip(rng.lognormal(np.log(2.0), 0.45), 0.8, 6.0), 3)),
        tibial_slope_deg=float(np.round(np.clip(rng.normal(7.0, 3.0), 0.0, 15.0), 3)),
        vessel_intensity=float(np.round(rng.uniform(0.45, 0.95), 3)),
        effusion_scale=float(np.round(rng.uniform(1.0, 2.4), 3)),
    )


def knee_anatomy(anatomy: KneeAnatomy, knee: ChallengeKnee, effusion_mm: float = 0.0) -> KneeAnatomy:
    """The knee's anatomy with the challenge's envelope offset, fluid film, slope and vein; a large
    effusion (``effusion_mm``, the distension) lifts the suprapatellar recess up to 58 mm."""
    return replace(
        anatomy,
        recess_top=45.0 + min(13.0, 0.6 * effusion_mm),
        ml_shift_mm=-knee.pcl_offset_mm,
        fluid_mm=knee.fluid_mm,
        tibial_slope_deg=knee.tibial_slope_deg,
        vein=True,
    )


def intensity_table(knee: ChallengeKnee) -> np.ndarray:
    """Per-tissue intensity of this knee (vessel signal from flow differs between knees)."""
    table = FAT_SUPPRESSED_INTENSITY.copy()
    table[6] = knee.vessel_intensity
    return table


VESSEL_LABELS = {1: "popliteal_vessel"}
TRUTH_COLUMNS = [
    "pcl_offset_mm", "ml_middle_slice", "effusion_ml", "fluid_ml", "fluid_mm", "tibial_slope_deg",
    "vessel_intensity", "effusion_scale", "vessel_path",
]  # fmt: skip


def place_series(pose: Pose, knee: ChallengeKnee, side: str) -> Pose:
    """Centre the series on the knee's medial-lateral middle (as a technologist would, within
    the default pose's jitter scaled to +/-3.9 mm), so the PCL lies ``pcl_offset_mm`` off it.

    Slice index grows toward the patient's right: lateral in a right knee, medial in a left one.
    """
    jitter = 0.6 * pose.through_plane_mm
    offset = knee.pcl_offset_mm if side == "right" else -knee.pcl_offset_mm
    return replace(pose, through_plane_mm=float(np.round(jitter + offset, 3)))


def truth_columns(
    knee: ChallengeKnee, pose: Pose, side: str, anatomy: KneeAnatomy, image: object, vessel_path: str
) -> dict[str, object]:
    """The challenge columns of a knee's row of truth/knees.csv.

    ``ml_middle_slice`` is the (fractional) slice index, in the stored InstanceNumber order, of
    the middle of the knee's medial-lateral extent; ``centre_slice`` stays the PCL slice.
    """
    offset = knee.pcl_offset_mm if side == "right" else -knee.pcl_offset_mm
    middle = (pose.n_slices - 1) / 2 + (pose.through_plane_mm - offset) / SLICE_MM
    kept = list(image.kept)
    middle -= sum(1 for i in range(pose.n_slices) if i not in kept and i < middle)
    return {
        "pcl_offset_mm": knee.pcl_offset_mm,
        "ml_middle_slice": round(float(middle), 3),
        "effusion_ml": image.effusion_ml,
        "fluid_ml": image.fluid_ml,
        "fluid_mm": knee.fluid_mm,
        "tibial_slope_deg": knee.tibial_slope_deg,
        "vessel_intensity": knee.vessel_intensity,
        "effusion_scale": knee.effusion_scale,
        "vessel_path": vessel_path,
    }


def summary(knee_rows: list[dict[str, object]]) -> dict[str, object]:
    """The challenge phantom's entry in truth/summary.json: the ranges drawn."""

    def spread(key: str) -> list[float]:
        values = np.array([float(row[key]) for row in knee_rows], dtype=float)
        if not values.size:
            return []
        return [round(float(v), 3) for v in np.percentile(values, [0, 10, 50, 90, 100])]

    return {
        "name": "challenge",
        "percentiles": [0, 10, 50, 90, 100],
        "effusion_ml": spread("effusion_ml"),
        "fluid_ml": spread("fluid_ml"),
        "pcl_offset_mm": spread("pcl_offset_mm"),
        "tibial_slope_deg": spread("tibial_slope_deg"),
        "bone_scale": spread("bone_scale"),
    }
