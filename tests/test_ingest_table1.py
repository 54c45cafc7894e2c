"""Table 1 p-values: the paper's printed numbers read back from its own counts and percentages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kneepain.ingest.table1 import (
    count_from_percent,
    fisher_sex_p,
    t_test_p,
    t_test_p_from_summary,
    table1,
    table1_markdown,
)


@pytest.mark.parametrize(
    ("n_left", "pct_left", "n_right", "pct_right", "printed"),
    [(734, 57.9, 771, 55.9, 0.700), (350, 59.4, 360, 60.8, 0.854), (46, 60.9, 61, 59.0, 1.000)],
)
def test_paper_sex_p_values_are_reproduced(
    n_left: int, pct_left: float, n_right: int, pct_right: float, printed: float
) -> None:
    female_left, female_right = count_from_percent(pct_left, n_left), count_from_percent(pct_right, n_right)
    p = fisher_sex_p(female_left, n_left, female_right, n_right, layout="female_total")
    assert round(p, 3) == pytest.approx(printed, abs=0.0015)


def test_model_a_sex_p_with_the_usual_table_differs_from_the_paper() -> None:
    # (female, male) x (left, right) for 425/734 vs 431/771: the printed 0.700 is not this test.
    assert fisher_sex_p(425, 734, 431, 771) == pytest.approx(0.4354, abs=1e-4)


@pytest.mark.parametrize(
    ("left", "right", "printed"),
    [((60.13, 9.18, 734), (61.24, 8.98, 771), 0.018), ((28.97, 4.88, 734), (28.38, 4.53, 771), 0.015)],
)
def test_paper_age_and_bmi_p_values_are_reproduced(left: tuple, right: tuple, printed: float) -> None:
    for equal_var in (True, False):
        assert t_test_p_from_summary(*left, *right, equal_var=equal_var) == pytest.approx(printed, abs=0.0015)


def test_table1_from_a_cohort_matches_direct_tests() -> None:
    rng = np.random.default_rng(7)
    n = 60
    cohort = pd.DataFrame(
        {
            "label": rng.integers(0, 2, n),
            "sex": np.where(rng.random(n) < 0.6, "female", "male"),
            "age": rng.normal(61, 9, n),
            "bmi": rng.normal(28.6, 4.7, n),
            "model_a": True,
            "model_b": rng.random(n) < 0.5,
        }
    )
    table = table1(cohort)
    a = table[table["group"] == "Model A"].set_index("parameter")
    left, right = cohort[cohort["label"] == 0], cohort[cohort["label"] == 1]
    assert a.loc["Subjects", "left_pain"] == f"n = {len(left)}"
    fl, fr = int((left["sex"] == "female").sum()), int((right["sex"] == "female").sum())
    assert a.loc["Percent female", "p_value"] == pytest.approx(fisher_sex_p(fl, len(left), fr, len(right)))
    assert a.loc["Percent female", "left_pain"] == f"{100 * fl / len(left):.1f}"
    assert a.loc["Age (years)", "p_value"] == pytest.approx(t_test_p(left["age"], right["age"]))
    assert a.loc["Age (years)", "left_pain"] == f"{left['age'].mean():.2f} ± {left['age'].std():.2f}"
    assert set(table["group"]) == {"Model A", "Model B"}
    markdown = table1_markdown(table)
    assert f"| Model A | Percent female | {100 * fl / len(left):.1f} |" in markdown
