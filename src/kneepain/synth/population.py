"""The synthetic people: demographics, per-knee lesion severities, pain, WOMAC, KL and missing values.

Everything here is drawn from the population stream of one subject's seed, so the clinical
values (and the oracle difficulty) can be computed for thousands of people without rendering a
single image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

# Every per-knee lesion array here (``severities`` and the two below) is indexed by lesion type:
# effusion-synovitis, bone marrow lesion, Hoffa-synovitis, cartilage loss, meniscal damage.
# How much each lesion type adds to a knee's burden per unit severity: roughly how much image area
# it changes, so the burden the pain label follows is something a CNN can see.
BURDEN_WEIGHTS = np.array([1.0, 1.0, 0.8, 0.8, 0.6])
# Chance that a lesion type is present in a knee of average severity, before severity shifts it.
LESION_BASE_LOGIT = np.array([-0.2, -0.6, -0.8, -0.4, -0.6])
# Pain latent noise (in burden units); chosen so the oracle AUC lands near 0.91 (see docs/synth.md).
PAIN_NOISE_SD = 0.45

CATEGORY_UNILATERAL = "unilateral"
CATEGORY_BILATERAL = "bilateral"
CATEGORY_NONE = "none"


@dataclass(frozen=True)
class Proportions:
    """Population mix: pain categories, missing series and image artifacts."""

    unilateral: float
    bilateral: float
    missing_series: float  # share of people with only one SAG_IW_TSE series
    artifact_per_knee: float  # share of knee series carrying a QC artifact
    missing_value: float  # share of people with an OAI missing code in a pain or BMI cell


PROPORTIONS = {
    # Most people unilateral so that a small cohort is useful for training.
    "training": Proportions(
        unilateral=0.86, bilateral=0.06, missing_series=0.03, artifact_per_knee=0.02, missing_value=0.01
    ),
    # The paper's funnel: 4,796 -> 1,606 unilateral -> 1,529 with both series -> 1,505 after QC.
    "paper": Proportions(
        unilateral=1606 / 4796,
        bilateral=0.22,
        missing_series=77 / 1606,
        artifact_per_knee=24 / 1529 / 2,
        missing_value=0.01,
    ),
}


@dataclass
class Knee:
    """One knee's truth that the clinical files and the image both derive from."""

    side: str
    severities: np.ndarray  # float (5,), 0 = lesion absent, else 0.15-1
    burden: float
    painful: bool
    womac: float
    kl: int
    has_series: bool


@dataclass
class Person:
    """One synthetic participant."""

    index: int
    subject_id: str
    cohort_folder: str
    sex: int  # 1 male, 2 female (OAI P02SEX codes)
    age: int
    height_mm: float
    weight_kg: float
    bmi: float
    study_date: str
    category: str
    propensity: float  # oracle: burden right minus left (noise-free part of the pain latent)
    pain_latent: float  # propensity + noise; its sign picks the painful side of unilateral people
    knees: dict[str, Knee] = field(default_factory=dict)
    missing_cells: dict[str, str] = field(default_factory=dict)  # OAI column -> missing code

    @property
    def label(self) -> int | None:
        """1 = right knee painful, 0 = left, None when pain is not unilateral."""
        if self.category != CATEGORY_UNILATERAL:
            return None
        return int(self.knees["right"].painful)


def subject_streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent population and image random streams for subject ``index`` of cohort ``seed``."""
    population, image = np.random.SeedSequence(entropy=seed, spawn_key=(index,)).spawn(2)
    return np.random.default_rng(population), np.random.default_rng(image)


def subject_ids(seed: int, count: int) -> list[str]:
    """Distinct 7-digit OAI-like ids starting with 9, increasing with the subject index."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(2**32 - 1,)))
    numbers = np.sort(rng.choice(999_000, size=count, replace=False)) + 9_000_100
    return [str(int(n)) for n in numbers]


def _severities(rng: np.random.Generator, knee_level: float) -> np.ndarray:
    """Per-lesion-type severity of one knee: present with a probability rising with the knee's level."""
    present = rng.random(5) < 1 / (1 + np.exp(-(LESION_BASE_LOGIT + 1.4 * knee_level)))
    size = np.clip(0.3 + 0.25 * knee_level + rng.normal(0, 0.25, 5), 0.15, 1.0)
    return np.where(present, size, 0.0)


def _kl_grade(rng: np.random.Generator, severities: np.ndarray, age: int) -> int:
    """KL grade following structural damage (cartilage, meniscus, BML) plus age and noise."""
    structural = 1.6 * severities[3] + 1.0 * severities[4] + 0.8 * severities[1]
    score = 0.4 + 1.3 * structural + 0.03 * (age - 60) + rng.normal(0, 0.45)
    return int(np.clip(np.round(score), 0, 4))


def _womac_pair(rng: np.random.Generator, latent_gap: float) -> tuple[float, float]:
    """WOMAC pain (0-20) of the painful and the other knee of a unilateral person.

    Shaped so that people with a difference of 3 or more look like OAI's Model B list: painful
    knee mean about 6.8 (sd 3), other knee about 1.0 with two-thirds zero.
    """
    painful = float(np.clip(np.round(rng.gamma(1.6, 2.6) + 0.3 * min(abs(latent_gap), 3)), 0, 20))
    other = 0.0 if rng.random() < 0.45 else float(np.clip(np.round(rng.gamma(1.5, 2.0) + 0.5), 1, 20))
    if rng.random() < 0.05:  # OAI has fractional WOMAC where an item was imputed
        painful = float(np.clip(painful + rng.choice([0.25, 0.5, -0.5]), 0, 20))
    return painful, other


def draw_person(seed: int, index: int, subject_id: str, count: int, proportions: Proportions) -> Person:
    """Draw one participant from the population stream of (seed, index). No images involved."""
    rng, _ = subject_streams(seed, index)
    sex = 2 if rng.random() < 0.57 else 1
    age = int(np.clip(np.round(rng.normal(61, 9)), 45, 79))
    bmi = float(np.clip(rng.normal(28.6, 4.7), 18.0, 45.0))
    height_mm = float(rng.normal(1760 if sex == 1 else 1625, 68))
    weight_kg = bmi * (height_mm / 1000) ** 2
    study_date = (date(2004, 2, 1) + timedelta(days=int(rng.integers(0, 1000)))).strftime("%Y%m%d")

    roll = rng.random()
    if roll < proportions.unilateral:
        category = CATEGORY_UNILATERAL
    elif roll < proportions.unilateral + proportions.bilateral:
        category = CATEGORY_BILATERAL
    else:
        category = CATEGORY_NONE

    person_level = rng.normal(0, 0.8) + 0.04 * (age - 61) + 0.05 * (bmi - 28.6)
    person_level += {CATEGORY_BILATERAL: 0.5, CATEGORY_NONE: -0.5}.get(category, 0.0)
    severities = {side: _severities(rng, person_level + rng.normal(0, 0.7)) for side in ("right", "left")}
    burdens = {side: float(BURDEN_WEIGHTS @ severities[side]) for side in severities}
    propensity = burdens["right"] - burdens["left"]
    pain_latent = propensity + rng.normal(0, PAIN_NOISE_SD)

    if category == CATEGORY_UNILATERAL:
        painful = {"right": pain_latent > 0, "left": pain_latent <= 0}
        high, low = _womac_pair(rng, pain_latent)
        womac = {side: high if painful[side] else low for side in painful}
    else:
        painful = {side: category == CATEGORY_BILATERAL for side in ("right", "left")}
        womac = {}
        for side in painful:
            if painful[side]:
                womac[side] = float(np.clip(np.round(rng.gamma(3.5, 1.5)), 0, 20))
            else:
                womac[side] = 0.0 if rng.random() < 0.7 else float(np.round(rng.gamma(1.2, 1.2)))

    has_series = {"right": True, "left": True}
    if rng.random() < proportions.missing_series:
        has_series["right" if rng.random() < 0.5 else "left"] = False

    knees = {
        side: Knee(
            side=side,
            severities=severities[side],
            burden=burdens[side],
            painful=bool(painful[side]),
            womac=womac[side],
            kl=_kl_grade(rng, severities[side], age),
            has_series=has_series[side],
        )
        for side in ("right", "left")
    }

    missing: dict[str, str] = {}
    if rng.random() < proportions.missing_value:
        column = str(rng.choice(["P01KPNREV", "P01KPNLEV", "P01BMI", "V00WOMKPR", "V00WOMKPL"]))
        missing[column] = ".: Missing Form/Incomplete Workbook"
    if rng.random() < 0.01:
        missing["V00XRKL_" + str(rng.choice(["right", "left"]))] = ".: Missing Form/Incomplete Workbook"

    c_share = 2686 / 4796  # OAI: the first 2,686 participants are in 0.C.2, the rest in 0.E.1
    return Person(
        index=index,
        subject_id=subject_id,
        cohort_folder="0.C.2" if index < round(c_share * count) else "0.E.1",
        sex=sex,
        age=age,
        height_mm=height_mm,
        weight_kg=weight_kg,
        bmi=bmi,
        study_date=study_date,
        category=category,
        propensity=propensity,
        pain_latent=pain_latent,
        knees=knees,
        missing_cells=missing,
    )


def expected_exclusion(person: Person, artifacts: dict[str, str]) -> str:
    """Why ingest/QC should drop this person from Model A (empty when they should stay)."""
    pain_cells = {"P01KPNREV", "P01KPNLEV"} & person.missing_cells.keys()
    if pain_cells:
        return f"missing pain value ({', '.join(sorted(pain_cells))})"
    if person.category != CATEGORY_UNILATERAL:
        return "pain in both knees" if person.category == CATEGORY_BILATERAL else "no knee pain"
    for side in ("left", "right"):
        if not person.knees[side].has_series:
            return f"no SAG_IW_TSE_{side.upper()} series"
    for side in ("left", "right"):
        if artifacts.get(side):
            return f"image quality: {artifacts[side]} ({side})"
    return ""


def in_model_b(person: Person, model_a: bool) -> bool:
    """Model B: Model A members with a WOMAC pain difference of 3 or more, both values present."""
    if not model_a or {"V00WOMKPR", "V00WOMKPL"} & person.missing_cells.keys():
        return False
    return abs(person.knees["right"].womac - person.knees["left"].womac) >= 3
