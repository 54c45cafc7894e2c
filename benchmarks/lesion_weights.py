"""How much each lesion type moves a run's out-of-fold predictions, against the generator's truth.

    python benchmarks/lesion_weights.py RUN --truth COHORT/truth

The synthetic pain propensity is the right knee's lesion burden minus the left one's, every
lesion type counting alike (severity units). Regressing the run's out-of-fold logit on the
per-type severity differences (right minus left) shows which lesions the network sees: equal
relative weights would mean it weighs them as the generator does. Prints Markdown: the weights
(least squares, numpy), each relative to their mean, the share of subjects where the type
differs between the knees, and R^2. Trains nothing; reads RUN/predictions.csv and
COHORT/truth/knees.csv only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import logit

from kneepain.synth.lesions import MASK_LABELS


def severity_differences(knees: pd.DataFrame) -> pd.DataFrame:
    """Per subject and lesion type, right-knee severity minus left-knee severity (0 where absent).

    ``knees`` is truth/knees.csv; its ``lesions`` column reads ``code:severity;code:severity``.
    """
    rows: dict[int, dict[str, float]] = {}
    for subject, side, lesions in knees[["subject_id", "side", "lesions"]].itertuples(index=False):
        row = rows.setdefault(int(subject), dict.fromkeys(MASK_LABELS.values(), 0.0))
        sign = 1.0 if side == "right" else -1.0
        for item in str(lesions).split(";") if isinstance(lesions, str) and lesions else []:
            code, severity = item.split(":")
            row[MASK_LABELS[int(code)]] += sign * float(severity)
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def lesion_weights(run: Path, truth: Path) -> pd.DataFrame:
    """Least-squares weight of each type's severity difference on the run's out-of-fold logit."""
    predictions = pd.read_csv(run / "predictions.csv").set_index("subject_id")
    differences = severity_differences(pd.read_csv(truth / "knees.csv"))
    missing = predictions.index.difference(differences.index)
    if len(missing):
        raise SystemExit(f"{truth / 'knees.csv'}: no knees for subjects {list(missing[:5])} of {run}")
    x = differences.loc[predictions.index].to_numpy()
    y = logit(predictions["prob_right"].clip(1e-6, 1 - 1e-6).to_numpy())
    design = np.column_stack([x, np.ones(len(x))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    weights = coef[:-1]
    residual = y - design @ coef
    r2 = 1.0 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())
    return pd.DataFrame(
        {
            "weight": weights,
            "relative": weights / weights.mean(),
            "differs_share": (x != 0).mean(axis=0),
        },
        index=differences.columns,
    ).assign(r2=r2)


def main() -> None:
    """Print the Markdown table for one run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--truth", type=Path, required=True, help="the synthetic cohort's truth folder")
    args = parser.parse_args()
    table = lesion_weights(args.run, args.truth)
    subjects = len(pd.read_csv(args.run / "predictions.csv"))
    print(f"{args.run} ({subjects} subjects), R^2 {table.r2.iloc[0]:.3f}\n")
    print("| lesion type | weight on the logit | relative to the mean | knees differ |")
    print("|---|---|---|---|")
    for name, row in table.iterrows():
        print(f"| {name} | {row.weight:.2f} | {row.relative:.2f} | {row.differs_share:.0%} |")


if __name__ == "__main__":
    main()
