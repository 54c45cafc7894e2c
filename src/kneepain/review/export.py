"""Export the reviews: the Figure 3I table (lesion x prediction correct / wrong) and reviewer agreement.

A case may carry several lesions, so category rows can add up to more than the total (the paper
recorded one per case); percentages are of the reviewer's reviewed cases.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.cam.compute import read_cam_outputs, run_identity
from kneepain.cam.stage import markdown_table
from kneepain.fileio import write_csv, write_text
from kneepain.review.store import CATEGORIES, CATEGORY_LABELS, ReviewStore

EXPORT_DIR = "review"


def lesion_table(reviews: pd.DataFrame, cases: pd.DataFrame, reviewer: str) -> pd.DataFrame:
    """One reviewer's Figure 3I: for each category, cases (n, %) and how many the model got right / wrong.

    ``cases`` is the CAM index (subject_id, correct); ``reviews`` the store's table.
    """
    mine = reviews[reviews["reviewer"] == reviewer].merge(
        cases[["subject_id", "correct"]], left_on="case_id", right_on="subject_id", how="inner"
    )
    correct = mine["correct"].astype(bool)
    rows = [{"category": "Total", "n": len(mine), "correct": int(correct.sum())}]
    for category in CATEGORIES:
        present = mine[category].astype(bool)
        rows.append(
            {
                "category": CATEGORY_LABELS[category],
                "n": int(present.sum()),
                "correct": int((present & correct).sum()),
            }
        )
    table = pd.DataFrame(rows)
    table["wrong"] = table["n"] - table["correct"]
    table["percent"] = (100.0 * table["n"] / max(len(mine), 1)).round(1)
    table.insert(0, "reviewer", reviewer)
    return table[["reviewer", "category", "n", "percent", "correct", "wrong"]]


def agreement(reviews: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Cohen's kappa per category between two reviewers, over the cases both reviewed.

    Kappa is undefined (NaN, with the raw agreement still given) when neither reviewer varies.
    """
    from sklearn.metrics import cohen_kappa_score

    a = reviews[reviews["reviewer"] == first].set_index("case_id")
    b = reviews[reviews["reviewer"] == second].set_index("case_id")
    shared = a.index.intersection(b.index).sort_values()
    rows = []
    for category in CATEGORIES:
        x = a.loc[shared, category].astype(int).to_numpy()
        y = b.loc[shared, category].astype(int).to_numpy()
        defined = len(shared) > 0 and len(np.union1d(x, y)) > 1
        rows.append(
            {
                "reviewer_a": first,
                "reviewer_b": second,
                "category": CATEGORY_LABELS[category],
                "cases": len(shared),
                "agreement": float((x == y).mean()) if len(shared) else float("nan"),
                "kappa": float(cohen_kappa_score(x, y)) if defined else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def export_reviews(run_dir: str | Path, db_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``lesion_table.csv|md`` (one table per reviewer) and ``agreement.csv`` for every reviewer pair.

    The database must belong to the run (checked by its stored run id). Returns the written paths.
    """
    run_dir = Path(run_dir)
    outputs = read_cam_outputs(run_dir)
    store = ReviewStore(db_path, run_identity(run_dir))
    reviews = store.table()
    out = Path(out_dir) if out_dir is not None else run_dir / EXPORT_DIR
    reviewers = sorted(reviews["reviewer"].unique())
    tables = [lesion_table(reviews, outputs.index, r) for r in reviewers]
    lesions = (
        pd.concat(tables, ignore_index=True)
        if tables
        else pd.DataFrame(columns=["reviewer", "category", "n", "percent", "correct", "wrong"])
    )
    pairs = [agreement(reviews, a, b) for a, b in itertools.combinations(reviewers, 2)]
    kappas = (
        pd.concat(pairs, ignore_index=True)
        if pairs
        else pd.DataFrame(columns=["reviewer_a", "reviewer_b", "category", "cases", "agreement", "kappa"])
    )
    lines = [f"# Radiologist review: run {store.run_id}", ""]
    if not reviewers:
        lines.append("No reviews recorded yet.")
    for reviewer, table in zip(reviewers, tables, strict=True):
        shown = table.drop(columns="reviewer").rename(
            columns={
                "category": "Lesion under the hot spot",
                "correct": "Pred. correct",
                "wrong": "Pred. wrong",
            }
        )
        lines += [f"## Reviewer {reviewer}", "", markdown_table(shown)]
    if len(kappas):
        lines += ["## Agreement (Cohen's kappa per category, cases both reviewed)", ""]
        shown = kappas.round(3).astype(object)
        lines.append(markdown_table(shown.where(kappas.notna(), "undefined")))
    written = [out / "lesion_table.csv", out / "lesion_table.md", out / "agreement.csv"]
    write_csv(written[0], lesions)
    write_text(written[1], "\n".join(lines) + "\n")
    write_csv(written[2], kappas)
    return written
