"""The study document: the paper's results section with the published value beside ours, one HTML file.

It computes nothing the stages did not write (AUCs, intervals, DeLong tests, subgroups, CAM areas
and lesion tables are read from each run's evaluation/, cam/ and review/ folders; Table 1 of the
review set is the ingest stage's own function on the split's test part); it only puts each number
beside the one published on the OAI and says where it came from. The building blocks (sections,
tables, embedded figures, number formats) are the report's and the evaluation's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from kneepain.contracts import SPLIT_FILE, WorkPaths, read_cohort
from kneepain.evaluate.provenance import synthetic_evidence
from kneepain.evaluate.tables import fmt, fmt_auc, fmt_p
from kneepain.fileio import write_text
from kneepain.ingest.table1 import table1
from kneepain.paper import published
from kneepain.paper.methods import BRANCH_NAMES, methods_sentences
from kneepain.paper.plan import (
    BRANCHES,
    RUN_A,
    RUN_B,
    PaperOptions,
    minutes,
    review_run_dir,
    unregistered_work,
)
from kneepain.report.html import LESION_WORDS, Section, data_uri, figure_layout

DOCUMENT_FILE = "paper.html"
PUBLISHED = "published on OAI"
PARTS = ("train", "validation", "test")


def ours_label(synthetic: bool) -> str:
    """The column label of our numbers: says 'synthetic' when the cohort is."""
    return "ours on this cohort (synthetic)" if synthetic else "ours on this cohort"


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"subject_id": str})
    except (OSError, ValueError):
        return None


def _auc_with_ci(metrics: dict[str, Any] | None, key: str = "auc_ci_delong") -> str:
    if not metrics or metrics.get("auc") is None:
        return "–"
    low, high = (float("nan") if v is None else v for v in metrics.get(key, [None, None]))
    return fmt_auc(metrics["auc"], low, high)


def grouped(rows: list[list[str]], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """A table with two header rows: the group (published / ours) over each column's name."""
    return pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples(columns))


class Study:
    """Where the study's files are, and what the document needs from them."""

    def __init__(self, options: PaperOptions, record: dict[str, Any]) -> None:
        self.work = options.work
        self.record = record
        self.experiments = {e["name"]: e for e in record.get("experiments", [])}
        runs = WorkPaths(self.work).runs
        unregistered = WorkPaths(unregistered_work(self.work)).runs
        self.runs: dict[str, Path] = {
            RUN_A: runs / RUN_A,
            RUN_B: runs / RUN_B,
            **{review_run_dir(self.work, b).name: review_run_dir(self.work, b) for b in BRANCHES},
            f"{RUN_A}-unregistered": unregistered / f"{RUN_A}-unregistered",
            f"{RUN_B}-unregistered": unregistered / f"{RUN_B}-unregistered",
        }
        info = _json(runs / RUN_A / "run.json") or {}
        self.evidence = synthetic_evidence(info, self.work)
        self.ours = ours_label(bool(self.evidence))

    def metrics(self, run: str) -> dict[str, Any] | None:
        return _json(self.runs[run] / "evaluation" / "metrics.json")

    def existing_runs(self) -> dict[str, Path]:
        return {name: path for name, path in self.runs.items() if (path / "run.json").exists()}

    def absent(self, section: Section, experiment: str, what: str) -> None:
        """Say why an experiment's results are absent: left out by the budget, or not there yet."""
        entry = self.experiments.get(experiment)
        if entry is not None and not entry["selected"]:
            section.missing = f"Not run: {entry['why_not']}."
        else:
            section.missing = f"Not available: {what}."


# --- sections ---------------------------------------------------------------------------------


def methods_section(study: Study) -> Section:
    section = Section("methods", "Methods as run")
    options = study.record.get("options", {})
    section.text(
        "Generated from each run folder's run.json (the software line from its evaluation): what was run, "
        "not what was asked for."
    )
    for sentence in methods_sentences(study.existing_runs(), options.get("preset")):
        section.text(sentence, "methods")
    if options.get("fast"):
        section.text(
            f"--fast: the {options.get('preset')} preset, {options.get('folds')} folds and "
            f"{options.get('epochs')} epochs: a smoke test of the pipeline, not the paper's protocol; its "
            "numbers mean nothing.",
            "verdict",
        )
    section.text(f"Published protocol: {published.METHODS}", "note")
    rows = []
    for experiment in study.record.get("experiments", []):
        steps = experiment["steps"]
        ran = [s for s in steps if s["status"] == "ran"]
        if not experiment["selected"]:
            state = experiment["why_not"]
        elif ran:
            seconds = sum(s["seconds"] or 0 for s in ran)
            state = f"{len(ran)} of {len(steps)} steps run by the last call ({minutes(seconds)})"
        else:
            state = "done before the last call"
        rows.append((experiment["name"], experiment["title"], state))
    section.table(
        pd.DataFrame(rows, columns=["Experiment", "What it answers", "State"]),
        caption="Experiments",
        note="Every command is in paper.json beside this document; each run folder works with kneepain "
        "evaluate, cam, report and review.",
    )
    return section


def _table1_rows(group: str, ours: pd.DataFrame | None) -> list[list[str]]:
    rows = []
    for parameter, (left, right, p) in published.TABLE1[group].items():
        mine = None
        if ours is not None:
            match = ours[ours["parameter"].str.replace("²", "2") == parameter]
            mine = match.iloc[0] if len(match) else None
        mine_p = "" if mine is None or pd.isna(mine["p_value"]) else fmt_p(float(mine["p_value"]))
        rows.append(
            [
                parameter,
                left,
                right,
                "" if p is None else fmt(p),
                "–" if mine is None else str(mine["left_pain"]),
                "–" if mine is None else str(mine["right_pain"]),
                mine_p,
            ]
        )
    return rows


def _split_ids(run_dir: Path, part: str) -> list[str] | None:
    split = _json(run_dir / SPLIT_FILE)
    return [str(s) for s in split[part]] if split and part in split else None


def table1_section(study: Study) -> Section:
    section = Section("table1", "Table 1: cohort characteristics")
    ingest = WorkPaths(study.work).ingest
    ours = _csv(ingest / "table1.csv")
    if ours is None:
        section.missing = f"{ingest / 'table1.csv'} not found (kneepain ingest writes it)."
    test_ids = _split_ids(review_run_dir(study.work), "test")
    review = None
    if test_ids is not None:
        cohort = read_cohort(WorkPaths(study.work).cohort_table)
        review_table = table1(cohort[cohort["subject_id"].isin(test_ids)])
        review = review_table[review_table["group"] == "Model B"]
    columns = [("", "Parameter")] + [
        (label, name) for label in (PUBLISHED, study.ours) for name in ("Left painful", "Right painful", "p")
    ]
    for group, rows in (
        ("Model A", None if ours is None else ours[ours["group"] == "Model A"]),
        ("Model B", None if ours is None else ours[ours["group"] == "Model B"]),
        ("Review set", review),
    ):
        section.table(grouped(_table1_rows(group, rows), columns), caption=group)
    section.text(
        "Ours: sex by Fisher's exact test, age and BMI by Welch's t-test (kneepain ingest); the review set "
        "is the test part of the 70/15/15 split. Published: the paper's Table 1b-d.",
        "note",
    )
    return section


def table2_section(study: Study) -> Section:
    section = Section("table2", "Table 2: data partitioning")
    rows = []
    for model, run in (("A", RUN_A), ("B", RUN_B)):
        folds = (_json(study.runs[run] / "run.json") or {}).get("folds")
        metrics = study.metrics(run)
        design = f"{folds}-fold, n = {metrics['n'] if metrics else '–'}" if folds else "not run"
        rows.append([f"Model {model}", f"10-fold, n = {published.SUBJECTS[model]}", design])
    section.table(
        grouped(rows, [("", "Cohort"), (PUBLISHED, "Cross-validation"), (study.ours, "Cross-validation")]),
        caption="Cross-validation: each participant tested once, by a fold model that did not train on it",
    )
    balance = _csv(review_run_dir(study.work) / "split_balance.csv")
    if balance is None:
        study.absent(section, "review", "the review split was not made (kneepain split)")
        return section
    ours = {str(r.parameter).replace("²", "2"): r for r in balance.itertuples()}
    rows = []
    for parameter, values in published.TABLE2_SPLIT.items():
        mine = ours.get(parameter)
        cells = []
        for pub, part in zip(values, PARTS, strict=True):
            cells += [pub, "–" if mine is None else str(getattr(mine, part))]
        p = "" if mine is None or pd.isna(mine.p_value) else fmt_p(float(mine.p_value))
        rows.append([parameter, *cells, p])
    parts = ("Train 70 %", "Validation 15 %", "Test 15 % (review set)")
    columns = [("", "Parameter")] + [(part, label) for part in parts for label in (PUBLISHED, study.ours)]
    section.table(
        grouped(rows, [*columns, ("", "p (ours)")]),
        caption="The 70/15/15 split of Model B, stratified by sex, age and BMI",
        note="p across the three parts of ours: one-way ANOVA for age and BMI, chi-square for women "
        "(kneepain split, split_balance.csv).",
    )
    return section


def roc_section(study: Study) -> Section:
    section = Section("figure4ab", "Figure 4A/B: ROC of Model A and Model B (out-of-fold)")
    rows, figures = [], []
    for model, run, panel in (("A", RUN_A, "4A"), ("B", RUN_B, "4B")):
        metrics = study.metrics(run)
        counts = (
            "–"
            if not metrics
            else f"{metrics['n']} ({metrics['n_right_painful']} / {metrics['n_left_painful']})"
        )
        rows.append(
            [
                f"Model {model}",
                f"{published.SUBJECTS[model]}",
                fmt(published.AUC[model]),
                counts,
                _auc_with_ci(metrics),
                _auc_with_ci(metrics, "auc_ci_bootstrap"),
            ]
        )
        image = study.runs[run] / "evaluation" / "roc.png"
        if image.exists():
            caption = (
                f"Figure {panel}, {study.ours}: Model {model} (published AUC {fmt(published.AUC[model])})."
            )
            figure = {
                "id": f"roc-{model}",
                "src": data_uri(image),
                "alt": f"ROC Model {model}",
                "caption": caption,
            }
            figures.append({**figure, **figure_layout(image)})
    columns = [
        ("", "Cohort"),
        (PUBLISHED, "N"),
        (PUBLISHED, "AUC"),
        (study.ours, "N (right / left painful)"),
        (study.ours, "AUC (DeLong 95% CI)"),
        (study.ours, "AUC (bootstrap 95% CI)"),
    ]
    section.table(
        grouped(rows, columns),
        note="Ours: the pooled out-of-fold predictions of every fold; bootstrap: resampled participants "
        "(kneepain evaluate).",
    )
    if figures:
        section.blocks.append({"kind": "figures", "figures": figures})
    else:
        section.missing = "No ROC figure yet: the Model A and Model B runs have not been evaluated."
    return section


def _comparison(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    comparisons = (metrics or {}).get("comparisons") or []
    return comparisons[0] if comparisons else None


def registration_section(study: Study) -> Section:
    section = Section("registration", "Registered vs unregistered input")
    rows = []
    for model, run in (("A", RUN_A), ("B", RUN_B)):
        test = _comparison(study.metrics(f"{run}-unregistered"))
        if test is None:
            continue
        rows.append(
            [
                f"Model {model}",
                fmt(published.AUC[model]),
                fmt(published.AUC_UNREGISTERED[model]),
                fmt(test["auc_other"]),
                fmt(test["auc_run"]),
                f"{fmt(test['auc_other'] - test['auc_run'])} (p {fmt_p(test['p_value'])})",
                str(test["n_common"]),
            ]
        )
    if not rows:
        study.absent(section, "unregistered", "the unregistered runs have not been evaluated")
        return section
    columns = [("", "Cohort")]
    columns += [(label, name) for label in (PUBLISHED, study.ours) for name in ("Registered", "Unregistered")]
    columns += [(study.ours, "Δ AUC (DeLong paired p)"), (study.ours, "Participants in both")]
    section.table(
        grouped(rows, columns),
        note="Unregistered: slices 8-30 of the raw series, no alignment (kneepain preprocess --no-register "
        "in the work folder's unregistered/ sub-folder, made from the same ingest tables). The paper gave no "
        "test; ours is DeLong's paired test on the participants both runs predicted.",
    )
    return section


def subgroup_section(study: Study) -> Section:
    section = Section("figure4c", "Figure 4C: subgroups")
    tables = {
        m: _csv(study.runs[run] / "evaluation" / "subgroups.csv") for m, run in (("A", RUN_A), ("B", RUN_B))
    }
    if all(t is None for t in tables.values()):
        section.missing = "Not available: the Model A and Model B runs have not been evaluated."
        return section
    rows = []
    for key, (n_a, auc_a, n_b, auc_b) in published.SUBGROUPS.items():
        row, description = [], key
        for model, n_pub, auc_pub in (("A", n_a, auc_a), ("B", n_b, auc_b)):
            table = tables[model]
            mine = None if table is None else table[table["subgroup"] == key]
            row += [n_pub, fmt(auc_pub)]
            if mine is not None and len(mine):
                r = mine.iloc[0]
                description = r["description"]
                row += [
                    f"{r['n']}{'*' if bool(r['reduced']) else ''}",
                    fmt_auc(r["auc"], r["ci_low"], r["ci_high"]),
                ]
            else:
                row += ["–", "–"]
        rows.append([description, *row])
    columns = [("", "Subgroup")]
    for model in ("A", "B"):
        for label in (PUBLISHED, study.ours):
            columns += [(f"Model {model}, {label}", "N"), (f"Model {model}, {label}", "AUC")]
    section.table(
        grouped(rows, columns),
        note="Ours: AUC with its DeLong 95% CI (kneepain evaluate, subgroups.csv). * n reduced: KL grade "
        "missing for some participants. 'undefined': a subgroup with one class only.",
    )
    return section


def _architecture_row(study: Study, branch: str) -> list[str] | None:
    run_dir = review_run_dir(study.work, branch)
    metrics = _json(run_dir / "evaluation" / "metrics.json")
    cams = _json(run_dir / "cam" / "localization.json")
    if metrics is None and cams is None:
        return None
    test = _comparison(metrics)
    area = published.CAM_AREA_ABOVE_HALF.get(branch)
    grid = cams.get("map_size") if cams else None
    return [
        BRANCH_NAMES[branch],
        published.CAM_MAP.get(branch, "–"),
        f"{area[0]:.1f} ± {area[1]:.1f}" if area else "–",
        fmt(published.ARCHITECTURE_AUC[branch]),
        " x ".join(str(v) for v in grid) if grid else "–",
        f"{cams['area_above_half_pct_mean']:.1f} ± {cams['area_above_half_pct_sd']:.1f}" if cams else "–",
        _auc_with_ci(metrics),
        "" if test is None else f"{fmt(test['auc_other'] - test['auc_run'])} (p {fmt_p(test['p_value'])})",
    ]


def _cam_case(study: Study) -> dict[str, str] | None:
    """One correctly predicted case of the review run's CAM gallery (the paper's Figure 3B), if any."""
    cam_dir = review_run_dir(study.work) / "cam"
    gallery = _csv(cam_dir / "gallery.csv")
    if gallery is None or gallery.empty:
        return None
    correct = gallery[gallery["correct"].astype(str).str.lower().isin(["true", "1"])]
    row = (correct if len(correct) else gallery).iloc[0]
    image = cam_dir / "gallery" / str(row["file"])
    if not image.exists():
        return None
    caption = (
        f"A KneeNet CAM of the review set, {study.ours}: participant {row['subject_id']}, painful knee "
        f"{row['painful_side']}, predicted {row['predicted_side']}. Every case: the review run's report."
    )
    layout = {"plot_fraction": str(row["plot_width_fraction"]), "width_px": str(row["width_px"])}
    return {"id": "cam-case", "src": data_uri(image), "alt": "CAM case", "caption": caption, **layout}


def architecture_section(study: Study) -> Section:
    section = Section(
        "figure3ab", "Figure 3A/B: KneeNet vs VGG16-GAP and AlexNet-GAP, AUC and CAM resolution"
    )
    rows = [row for row in (_architecture_row(study, b) for b in BRANCHES) if row is not None]
    if len(rows) < len(BRANCHES):
        study.absent(section, "architectures", "the review split runs have not all been trained and mapped")
    if rows:
        columns = [("", "Siamese branch")]
        columns += [(PUBLISHED, n) for n in ("CAM grid", "Area above 0.5, %", "AUC")]
        columns += [(study.ours, n) for n in ("CAM grid", "Area above 0.5, %", "AUC (DeLong 95% CI)")]
        section.table(
            grouped(rows, [*columns, (study.ours, "KneeNet − this: Δ AUC (p)")]),
            note="All on the test part of the review split. Ours at the preset's input size (the CAM grid "
            "says which); area above 0.5: each participant's normalised map at the painful knee's best "
            "slice, mean ± SD (kneepain cam). Published areas are at 224 x 224 input; the paper gave no area "
            "for AlexNet-GAP. Δ AUC: DeLong's paired test on the same participants.",
        )
    case = _cam_case(study)
    if case is not None:
        section.blocks.append({"kind": "figures", "figures": [case]})
    return section


def _lesion_cells(values: tuple[int, float, int, int] | None) -> list[str]:
    if values is None:
        return ["–", "–", "–"]
    n, percent, correct, wrong = values
    return [f"{n} ({percent:.1f}%)", str(correct), str(wrong)]


def _lesion_table(rows: list[list[str]], study: Study, ours: str) -> pd.DataFrame:
    names = ("Cases (%)", "Prediction correct", "Prediction wrong")
    columns = [("", "Lesion under the hot spot")]
    columns += [(f"{PUBLISHED} (radiologist)", n) for n in names] + [(ours, n) for n in names]
    return grouped(rows, columns)


def lesion_section(study: Study) -> Section:
    section = Section("figure3i", "Figure 3I: lesions under the hot spot in the review set")
    review = review_run_dir(study.work)
    exported = _csv(review / "review" / "lesion_table.csv")
    if exported is not None and len(exported):
        from kneepain.review.store import CATEGORY_LABELS

        keys = {label: key for key, label in CATEGORY_LABELS.items()} | {"Total": "total"}
        for reviewer, table in exported.groupby("reviewer", sort=True):
            rows = [
                [
                    str(r.category),
                    *_lesion_cells(published.LESIONS.get(keys.get(str(r.category), ""))),
                    *_lesion_cells((int(r.n), float(r.percent), int(r.correct), int(r.wrong))),
                ]
                for r in table.itertuples()
            ]
            section.table(
                _lesion_table(rows, study, f"reviewer {reviewer}, {study.ours}"),
                caption=f"Reviewer {reviewer}",
            )
        agreement = _csv(review / "review" / "agreement.csv")
        if agreement is not None and len(agreement):
            shown = agreement.assign(
                agreement=agreement["agreement"].map(lambda v: fmt(v, 2)),
                kappa=agreement["kappa"].map(lambda v: fmt(v, 2)),
            )
            section.table(
                shown.rename(columns=lambda c: c.replace("_", " ").capitalize()),
                caption="Agreement between reviewers (Cohen's kappa per category, labels committed blind)",
            )
        section.text(f"From kneepain review export of {review.name} and the --review-db database.", "note")
        return section
    measured = _csv(review / "cam" / "lesion_table.csv")
    if measured is None:
        section.missing = (
            "Not available: no review database was given (--review-db) and the review run's CAMs were not "
            "measured against lesion masks."
        )
        return section
    rows = [
        [
            LESION_WORDS.get(r.lesion, str(r.lesion)),
            *_lesion_cells(published.LESIONS.get(r.lesion)),
            *_lesion_cells((int(r.n), float(r.percent), int(r.correct), int(r.wrong))),
        ]
        for r in measured.itertuples()
    ]
    section.table(
        _lesion_table(rows, study, f"{study.ours}, generator's lesion masks"),
        note="Ours is measured against the synthetic generator's lesion masks, not read by a radiologist. "
        "Give --review-db with the review run's database (kneepain review) for the reader study's table.",
    )
    return section


# --- the document -----------------------------------------------------------------------------

_HEADER = re.compile(r"<th([^>]*)>([^<]*)</th>")


def _mark_columns(html: str, ours: str) -> str:
    """Shade the header cells of published and of our columns, so a reader tells them apart."""

    def mark(match: re.Match[str]) -> str:
        attributes, text = match.groups()
        css = "pub" if PUBLISHED in text else "ours" if ours in text else ""
        return f'<th{attributes} class="{css}">{text}</th>' if css else match.group(0)

    return _HEADER.sub(mark, html)


def build_document(options: PaperOptions, record: dict[str, Any]) -> Path:
    """Write OUT/paper.html from the study's run folders; returns its path."""
    from jinja2 import Environment

    from kneepain.paper.page import TEMPLATE

    study = Study(options, record)
    sections = [
        methods_section(study),
        table1_section(study),
        table2_section(study),
        roc_section(study),
        registration_section(study),
        subgroup_section(study),
        architecture_section(study),
        lesion_section(study),
    ]
    for section in sections:
        for block in section.blocks:
            if block["kind"] == "table":
                block["html"] = _mark_columns(block["html"], study.ours)
    html = (
        Environment(autoescape=True)
        .from_string(TEMPLATE)
        .render(
            work=str(options.work.resolve()),
            synthetic=bool(study.evidence),
            evidence=study.evidence,
            published=PUBLISHED,
            ours=study.ours,
            source=published.SOURCE,
            sections=sections,
        )
    )
    target = options.out_dir / DOCUMENT_FILE
    write_text(target, html)
    return target
