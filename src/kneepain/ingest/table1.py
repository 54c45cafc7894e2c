"""Table 1 (b-c) of the paper: left-pain vs right-pain groups, n, % female, age and BMI, p-values.

Sex is compared with Fisher's exact test on the 2x2 table (female, male) x (left, right). The
paper's printed sex p-values (0.700, 0.854, 1.000) are reproduced exactly by a different table,
(female, all subjects) x (left, right); ``fisher_sex_p(..., layout="female_total")`` computes that
one so the paper's numbers can be checked, and Table 1 shows it beside the correct test.
Age and BMI use Welch's t-test by default (Student's, as in the paper, with ``equal_var=True``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from kneepain.contracts import LABEL_LEFT_PAINFUL, LABEL_RIGHT_PAINFUL

TABLE1_COLUMNS = ["group", "parameter", "left_pain", "right_pain", "p_value", "test", "p_value_paper_method"]
GROUPS = (("Model A", "model_a"), ("Model B", "model_b"))


def count_from_percent(percent: float, n: int) -> int:
    """The whole count that a percentage of ``n`` printed with rounding stands for."""
    return round(percent / 100.0 * n)


def fisher_sex_p(
    female_left: int,
    n_left: int,
    female_right: int,
    n_right: int,
    *,
    layout: Literal["female_male", "female_total"] = "female_male",
) -> float:
    """Two-sided Fisher exact p-value comparing the share of women between two groups.

    ``female_male`` is the usual 2x2 table; ``female_total`` puts group sizes in the second row,
    which is what reproduces the paper's printed values.
    """
    second = (n_left - female_left, n_right - female_right) if layout == "female_male" else (n_left, n_right)
    return float(stats.fisher_exact([[female_left, female_right], list(second)])[1])


def t_test_p(left: np.ndarray, right: np.ndarray, *, equal_var: bool = False) -> float:
    """Two-sided t-test p-value (Welch's unless ``equal_var``); NaN values are left out."""
    left = np.asarray(left, float)
    right = np.asarray(right, float)
    left, right = left[np.isfinite(left)], right[np.isfinite(right)]
    if len(left) < 2 or len(right) < 2:
        return float("nan")
    return float(stats.ttest_ind(left, right, equal_var=equal_var).pvalue)


def t_test_p_from_summary(
    mean_left: float,
    sd_left: float,
    n_left: int,
    mean_right: float,
    sd_right: float,
    n_right: int,
    *,
    equal_var: bool = False,
) -> float:
    """The same t-test from printed means, standard deviations and counts (to check a paper)."""
    result = stats.ttest_ind_from_stats(
        mean_left, sd_left, n_left, mean_right, sd_right, n_right, equal_var=equal_var
    )
    return float(result.pvalue)


def _mean_sd(values: pd.Series) -> str:
    values = values.astype(float).dropna()
    if values.empty:
        return ""
    if len(values) == 1:
        return f"{values.mean():.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def table1(cohort: pd.DataFrame, *, equal_var: bool = False) -> pd.DataFrame:
    """Table 1 rows per group (Model A, Model B): subjects, percent female, age, BMI with p-values."""
    t_name = "Student t-test" if equal_var else "Welch t-test"
    rows = []
    for group, column in GROUPS:
        members = cohort[cohort[column].astype(bool)]
        left = members[members["label"] == LABEL_LEFT_PAINFUL]
        right = members[members["label"] == LABEL_RIGHT_PAINFUL]
        rows.append([group, "Subjects", f"n = {len(left)}", f"n = {len(right)}", np.nan, "", np.nan])
        known_left, known_right = left["sex"].dropna(), right["sex"].dropna()
        female_left, female_right = int((known_left == "female").sum()), int((known_right == "female").sum())
        if len(known_left) and len(known_right):
            p = fisher_sex_p(female_left, len(known_left), female_right, len(known_right))
            p_paper = fisher_sex_p(
                female_left, len(known_left), female_right, len(known_right), layout="female_total"
            )
            pct_left = f"{100 * female_left / len(known_left):.1f}"
            pct_right = f"{100 * female_right / len(known_right):.1f}"
        else:
            p = p_paper = np.nan
            pct_left = pct_right = ""
        rows.append([group, "Percent female", pct_left, pct_right, p, "Fisher exact", p_paper])
        for parameter, name in (("Age (years)", "age"), ("BMI (kg/m2)", "bmi")):
            rows.append(
                [
                    group,
                    parameter,
                    _mean_sd(left[name]),
                    _mean_sd(right[name]),
                    t_test_p(left[name], right[name], equal_var=equal_var),
                    t_name,
                    t_test_p(left[name], right[name], equal_var=True),
                ]
            )
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def table1_markdown(table: pd.DataFrame) -> str:
    """Markdown rendering of Table 1 (hand-written: pandas' to_markdown needs the extra 'tabulate')."""
    header = [
        "Group",
        "Parameter",
        "Left knee pain",
        "Right knee pain",
        "p-value",
        "Test",
        "p (paper's method)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cells = [
            row.group,
            row.parameter,
            row.left_pain,
            row.right_pain,
            "" if pd.isna(row.p_value) else f"{row.p_value:.3f}",
            row.test,
            "" if pd.isna(row.p_value_paper_method) else f"{row.p_value_paper_method:.3f}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    note = (
        "\nSex: Fisher's exact test on (female, male) x (left, right). The paper's printed sex p-values "
        "are reproduced by (female, all subjects) x (left, right), shown as the paper's method. "
        "Age and BMI: the paper's method is Student's t-test.\n"
    )
    return "\n".join(lines) + "\n" + note
