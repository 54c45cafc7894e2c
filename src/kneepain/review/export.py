"""Export a reader study: the Figure 3I table, blinding per reviewer, and agreement from blind labels.

- The lesion table (lesion x prediction correct / wrong) uses each reviewer's final label. A case
  may carry several lesions, so category rows can add up to more than the total (the paper
  recorded one per case); percentages are of the reviewer's labelled cases.
- Agreement (Cohen's kappa per category, every reviewer pair) uses the labels committed blind:
  for each case, the reviewer's last version saved before anything was revealed to them. Labels
  migrated from a database that did not record reveals count as unknown and are left out.
- Every step is one pass over reviewers x cases (group-bys, and matrix products for all pairs at
  once), so the export stays fast with many reviewers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.cam.compute import read_cam_outputs, run_identity
from kneepain.fileio import markdown_table, write_csv, write_text
from kneepain.review.store import CATEGORIES, CATEGORY_LABELS, REVIEWER_PATTERN, ReviewStore

EXPORT_DIR = "review"
LESION_COLUMNS = ["reviewer", "category", "n", "percent", "correct", "wrong"]
KAPPA_COLUMNS = ["reviewer_a", "reviewer_b", "category", "cases", "agreement", "kappa"]
BLINDING_COLUMNS = [
    "reviewer",
    "labelled",
    "committed_blind",
    "unknown_blinding",
    "revealed",
    "edited_after_reveal",
    "first_reveal_at",
]


def lesion_tables(reviews: pd.DataFrame, cases: pd.DataFrame) -> pd.DataFrame:
    """Every reviewer's Figure 3I: per category, cases (n, %) and how many the model got right / wrong.

    ``cases`` is the CAM index (subject_id, correct); ``reviews`` the store's table.
    """
    merged = reviews.merge(
        cases[["subject_id", "correct"]], left_on="case_id", right_on="subject_id", how="inner"
    )
    if merged.empty:
        return pd.DataFrame(columns=LESION_COLUMNS)
    correct = merged["correct"].astype(bool)
    flags = merged[list(CATEGORIES)].astype(bool)
    counts = flags.groupby(merged["reviewer"]).sum()
    right = flags.mul(correct, axis=0).groupby(merged["reviewer"]).sum()
    totals = merged.groupby("reviewer").size()
    total_right = correct.groupby(merged["reviewer"]).sum()
    rows = []
    for reviewer in sorted(totals.index):
        n_cases = int(totals[reviewer])
        rows.append((reviewer, "Total", n_cases, int(total_right[reviewer])))
        for category in CATEGORIES:
            rows.append(
                (
                    reviewer,
                    CATEGORY_LABELS[category],
                    int(counts.at[reviewer, category]),
                    int(right.at[reviewer, category]),
                )
            )
    table = pd.DataFrame(rows, columns=["reviewer", "category", "n", "correct"])
    table["wrong"] = table["n"] - table["correct"]
    totals_by_row = table["reviewer"].map(totals).clip(lower=1)
    table["percent"] = (100.0 * table["n"] / totals_by_row).round(1)
    return table[LESION_COLUMNS]


def known_history(history: pd.DataFrame) -> pd.DataFrame:
    """History of the (case, reviewer) pairs whose every save recorded its blinding state.

    A pair with a save migrated from schema 1 is left out as a whole: a reveal before the
    migration was not recorded, so even a later save cannot be called blind.
    """
    unknown = (
        history["after_reveal"].isna().groupby([history["case_id"], history["reviewer"]]).transform("any")
    )
    return history[~unknown]


def blind_labels(history: pd.DataFrame) -> pd.DataFrame:
    """Each (case, reviewer)'s last version saved before anything of the case was revealed to them."""
    known = known_history(history)
    blind = known[known["after_reveal"].eq(0)]
    return blind.sort_values("id").groupby(["case_id", "reviewer"], as_index=False).last()


def blinding_summary(reviews: pd.DataFrame, history: pd.DataFrame, reveals: pd.DataFrame) -> pd.DataFrame:
    """Per reviewer: labelled cases, how many were committed before any reveal, and what came after."""
    names = sorted(set(reviews["reviewer"]) | set(reveals["reviewer"]))

    def cases_where(frame: pd.DataFrame) -> pd.Series:
        return frame.drop_duplicates(["case_id", "reviewer"]).groupby("reviewer").size()

    known = known_history(history)
    labelled = cases_where(reviews)
    blind = cases_where(known[known["after_reveal"].eq(0)])
    unknown = cases_where(history[history["after_reveal"].isna()])
    revealed = cases_where(reveals)
    edited = cases_where(known[known["after_reveal"].eq(1)])
    first = reveals.groupby("reviewer")["revealed_at"].min()
    table = pd.DataFrame({"reviewer": names})
    for column, counts in (
        ("labelled", labelled),
        ("committed_blind", blind),
        ("unknown_blinding", unknown),
        ("revealed", revealed),
        ("edited_after_reveal", edited),
    ):
        table[column] = table["reviewer"].map(counts).fillna(0).astype(int)
    table["first_reveal_at"] = table["reviewer"].map(first).astype(object).fillna("")
    return table[BLINDING_COLUMNS]


def pairwise_kappa(labels: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa per category for every reviewer pair over the cases both labelled.

    All pairs at once: for 0/1 answers X and a presence mask M (reviewers x cases), the shared
    cases are M M^T, the ones each pair answered 1 are X M^T and M X^T, both 1 is X X^T. Kappa is
    undefined (NaN, raw agreement still given) when neither reviewer's answers vary.
    """
    reviewers = sorted(labels["reviewer"].unique())
    if len(reviewers) < 2:
        return pd.DataFrame(columns=KAPPA_COLUMNS)
    cases = sorted(labels["case_id"].unique())
    r = pd.Index(reviewers).get_indexer(labels["reviewer"])
    c = pd.Index(cases).get_indexer(labels["case_id"])
    present = np.zeros((len(reviewers), len(cases)))
    present[r, c] = 1.0
    shared = present @ present.T
    first, second = np.triu_indices(len(reviewers), k=1)
    frames = []
    for category in CATEGORIES:
        answers = np.zeros_like(present)
        answers[r, c] = labels[category].to_numpy(dtype=float)
        yes_a = (answers @ present.T)[first, second]
        yes_b = (present @ answers.T)[first, second]
        both = (answers @ answers.T)[first, second]
        n = shared[first, second]
        with np.errstate(divide="ignore", invalid="ignore"):
            observed = (n - yes_a - yes_b + 2 * both) / n
            pa, pb = yes_a / n, yes_b / n
            expected = pa * pb + (1 - pa) * (1 - pb)
            constant = ((yes_a == n) & (yes_b == n)) | ((yes_a == 0) & (yes_b == 0))
            kappa = np.where(constant | (n == 0), np.nan, (observed - expected) / (1 - expected))
        frames.append(
            pd.DataFrame(
                {
                    "reviewer_a": np.asarray(reviewers)[first],
                    "reviewer_b": np.asarray(reviewers)[second],
                    "category": CATEGORY_LABELS[category],
                    "cases": n.astype(int),
                    "agreement": observed,
                    "kappa": kappa,
                }
            )
        )
    order = {label: i for i, label in enumerate(CATEGORY_LABELS.values())}
    table = pd.concat(frames, ignore_index=True)
    table["_order"] = table["category"].map(order)
    return (
        table.sort_values(["reviewer_a", "reviewer_b", "_order"])
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def study_summary(store: ReviewStore) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The blinding table per reviewer and the pairwise kappa from labels committed blind."""
    history = store.history()
    return (
        blinding_summary(store.table(), history, store.reveals()),
        pairwise_kappa(blind_labels(history)),
    )


def export_reviews(run_dir: str | Path, db_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``lesion_table.csv|md``, ``blinding.csv`` and ``agreement.csv`` (kappa from blind labels).

    The database must belong to the run (checked by its stored run id). Returns the written paths.
    """
    run_dir = Path(run_dir)
    outputs = read_cam_outputs(run_dir)
    store = ReviewStore(db_path, run_identity(run_dir))
    reviews = store.table()
    blinding, kappas = study_summary(store)
    lesions = lesion_tables(reviews, outputs.index)
    protocol = store.protocol()
    out = Path(out_dir) if out_dir is not None else run_dir / EXPORT_DIR
    lines = [
        f"# Radiologist review: run {store.run_id}",
        "",
        f"Protocol: prediction shown {protocol.prediction.replace('_', ' ')}; pain side "
        f"{protocol.pain_side.replace('_', ' ')}. Research data, not for clinical use.",
        "",
    ]
    if reviews.empty:
        lines.append("No reviews recorded yet.")
    for reviewer, table in lesions.groupby("reviewer", sort=True):
        shown = table.drop(columns="reviewer").rename(
            columns={
                "category": "Lesion under the hot spot",
                "correct": "Pred. correct",
                "wrong": "Pred. wrong",
            }
        )
        # a name kept from a schema-1 database may not be a valid one now ("alice\n"): show it quoted
        name = reviewer if REVIEWER_PATTERN.match(reviewer) else repr(reviewer)
        lines += [f"## Reviewer {name}", "", markdown_table(shown)]
    if len(blinding):
        lines += [
            "## Blinding (cases per reviewer; committed_blind: a label saved before anything was revealed)",
            "",
            markdown_table(blinding),
        ]
    if len(kappas):
        lines += [
            "## Agreement (Cohen's kappa per category, labels committed blind, cases both labelled)",
            "",
        ]
        shown = kappas.round(3).astype(object)
        lines.append(markdown_table(shown.where(kappas.notna(), "undefined")))
    written = [out / "lesion_table.csv", out / "lesion_table.md", out / "agreement.csv", out / "blinding.csv"]
    write_csv(written[0], lesions)
    write_text(written[1], "\n".join(lines) + "\n")
    write_csv(written[2], kappas)
    write_csv(written[3], blinding)
    return written
