"""Markdown renderings of the evaluation tables, for people reading the files or the report.

Hand-written (a few lines) because pandas' ``to_markdown`` needs the extra ``tabulate`` package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd


def fmt(value: float, digits: int = 3) -> str:
    """A number with fixed digits, or an en dash when it is missing/undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_auc(auc: float, low: float, high: float) -> str:
    """'0.808 (0.786–0.830)', or just the AUC when the interval is undefined."""
    if auc is None or math.isnan(auc):
        return "undefined"
    if low is None or math.isnan(low):
        return fmt(auc)
    return f"{fmt(auc)} ({fmt(low)}–{fmt(high)})"


def fmt_p(p: float) -> str:
    """A p-value as a reader expects it: three decimals ('0.012'), '<0.001' below one in a thousand."""
    if p is None or math.isnan(p):
        return "undefined"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


ARCHITECTURE_WORDS = (
    ("width", "width x{}"),
    ("input_size", "input {} px"),
    ("head", "{} head"),
    ("combine", "combine {}"),
    ("readout", "readout {}"),
)


def describe_run(info: dict[str, Any]) -> str:
    """One sentence of what a run is (folds, cohort, network, training) from its run.json.

    For captions: a run's configuration in words, never the raw dict; '' when run.json records none.
    """
    parts = []
    if info.get("kind") == "cv" and info.get("folds"):
        parts.append(f"{info['folds']}-fold cross-validation")
    elif info.get("kind") == "split":
        parts.append("one 70/15/15 split")
    if info.get("model"):
        parts.append(f"Model {info['model']} cohort")
    architecture = info.get("architecture")
    if isinstance(architecture, dict):
        details = [
            pattern.format(architecture[key]) for key, pattern in ARCHITECTURE_WORDS if key in architecture
        ]
        if int(architecture.get("members", 1) or 1) > 1:
            details.append(f"ensemble of {architecture['members']}")
        parts.append(f"{architecture.get('branch', 'Siamese')} network ({', '.join(details)})")
    elif isinstance(architecture, str) and architecture:
        parts.append(f"{architecture} network")
    training = info.get("training")
    if isinstance(training, dict) and training.get("epochs"):
        parts.append(f"{training.get('optimizer', 'trained')}, up to {training['epochs']} epochs")
    return "; ".join(parts)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (pipes inside cells escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)]) + "\n"


def subgroup_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the subgroup table (asterisk on n where it is reduced)."""
    header = ["Description", "N", "Right / left painful", "AUC (95% CI)", "Note"]
    rows = [
        [
            r.description,
            f"{r.n}{'*' if r.reduced else ''}",
            f"{r.n_right_painful} / {r.n_left_painful}",
            fmt_auc(r.auc, r.ci_low, r.ci_high),
            r.note if isinstance(r.note, str) else "",
        ]
        for r in table.itertuples()
    ]
    return header, rows


def subgroup_markdown(table: pd.DataFrame, title: str) -> str:
    """The Figure 4C table in Markdown with the asterisk footnote."""
    header, rows = subgroup_rows(table)
    text = f"# {title}\n\n" + markdown_table(header, rows)
    if table["reduced"].any():
        text += "\n\\* n reduced: the variable (e.g. KL grade) is missing for some subjects; see Note.\n"
    return text


def comparison_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the paired comparison table."""
    header = [
        "Run",
        "Compared with",
        "What differs",
        "Common (dropped)",
        "AUC run / other",
        "Δ AUC",
        "p",
    ]
    rows = [
        [
            r.run,
            r.other_run,
            r.differs,
            f"{r.n_common} ({r.n_only_run} + {r.n_only_other})",
            f"{fmt(r.auc_run)} / {fmt(r.auc_other)}",
            fmt(r.difference),
            fmt_p(r.p_value),
        ]
        for r in table.itertuples()
    ]
    return header, rows


def comparison_markdown(table: pd.DataFrame, title: str) -> str:
    """Paired DeLong comparisons in Markdown; says so when none was requested."""
    text = f"# {title}\n\n"
    if table.empty:
        return text + "No comparison requested (`kneepain evaluate RUN --compare OTHER_RUN`).\n"
    header, rows = comparison_rows(table)
    return (
        text
        + markdown_table(header, rows)
        + "\nPaired DeLong test on the subjects common to both runs; Δ AUC = other − run; "
        "dropped = subjects only in the run + only in the other.\n"
    )
