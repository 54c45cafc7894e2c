"""The population model alone (no images): difficulty targets, OAI-like proportions, WOMAC, missing codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kneepain.synth.clinical_writer import write_clinical
from kneepain.synth.difficulty import ORACLE_TARGET, oracle_auc
from kneepain.synth.population import PROPORTIONS, Proportions, draw_person, expected_exclusion, subject_ids


def _people(seed: int, count: int, proportions: Proportions) -> list:
    ids = subject_ids(seed, count)
    return [draw_person(seed, i, ids[i], count, proportions) for i in range(count)]


@pytest.mark.parametrize("seed", [1, 2])
def test_oracle_auc_is_within_the_default_target(seed: int) -> None:
    people = [p for p in _people(seed, 1500, PROPORTIONS["training"]) if p.label is not None]
    labels = np.array([p.label for p in people])
    value = oracle_auc(labels, np.array([p.propensity for p in people]))
    assert ORACLE_TARGET[0] <= value <= ORACLE_TARGET[1]
    assert 0.4 < labels.mean() < 0.6
    # Pain-free knees have lesions too, and some painful knees have little to see.
    painless = np.array([p.knees["left" if p.label else "right"].burden for p in people])
    painful = np.array([p.knees["right" if p.label else "left"].burden for p in people])
    assert painful.mean() > painless.mean() + 0.5
    assert (painless > 1.0).mean() > 0.1 and (painful < 0.3).mean() > 0.05


def test_paper_proportions_reproduce_the_funnel() -> None:
    people = _people(3, 4796, PROPORTIONS["paper"])
    unilateral = [p for p in people if p.label is not None]
    both = [p for p in unilateral if all(k.has_series for k in p.knees.values())]
    assert abs(len(unilateral) - 1606) < 90
    assert abs(len(both) / len(unilateral) - 1529 / 1606) < 0.02
    assert sum(p.cohort_folder == "0.C.2" for p in people) == 2686


def test_womac_in_model_b_looks_like_oai() -> None:
    people = [p for p in _people(4, 2500, PROPORTIONS["training"]) if p.label is not None]
    painful = np.array([p.knees["right" if p.label else "left"].womac for p in people])
    other = np.array([p.knees["left" if p.label else "right"].womac for p in people])
    model_b = painful - other >= 3
    assert painful[model_b].mean() == pytest.approx(6.8, abs=0.6)
    assert 2.4 < painful[model_b].std() < 3.8
    assert other[model_b].mean() == pytest.approx(1.0, abs=0.4)
    assert (other[model_b] == 0).mean() == pytest.approx(2 / 3, abs=0.08)
    assert painful.max() <= 20 and other.min() >= 0


def test_kl_grade_follows_structural_damage() -> None:
    people = _people(6, 1500, PROPORTIONS["training"])
    kl = np.array([p.knees[s].kl for p in people for s in ("left", "right")])
    damage = np.array([p.knees[s].severities[[1, 3, 4]].sum() for p in people for s in ("left", "right")])
    assert set(np.unique(kl)) == {0, 1, 2, 3, 4}
    assert np.corrcoef(kl, damage)[0, 1] > 0.6


def test_missing_codes_reach_the_clinical_files_and_the_exclusion_reason(tmp_path: Path) -> None:
    always_missing = Proportions(
        unilateral=1.0, bilateral=0.0, missing_series=0.0, artifact_per_knee=0.0, missing_value=1.0
    )
    people = _people(7, 40, always_missing)
    write_clinical(tmp_path, people)
    allc = pd.read_csv(tmp_path / "AllClinical_ASCII" / "AllClinical00.txt", sep="|", dtype=str)
    raw = (tmp_path / "AllClinical_ASCII" / "AllClinical00.txt").read_bytes()
    assert raw.count(b"\r\n") == len(people) + 1  # OAI-style CRLF endings
    missing = allc.drop(columns="ID").apply(lambda col: col.str.startswith(".")).sum(axis=1)
    assert (missing == 1).all()  # exactly one missing cell per person, as drawn
    for person, row in zip(people, allc.itertuples(), strict=True):
        (column, _code), *_ = person.missing_cells.items() or [("", "")]
        if column in allc.columns:
            assert getattr(row, column) == ".: Missing Form/Incomplete Workbook"
        reason = expected_exclusion(person, {})
        assert ("missing pain value" in reason) == (column in ("P01KPNREV", "P01KPNLEV"))
