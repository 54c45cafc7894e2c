"""Build ``RUN/report.html``: one self-contained file (figures embedded as base64 data URIs).

The report only shows what the stages wrote; it computes nothing itself. Every section is
optional: when its input file is absent the section says which stage was not run.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kneepain.contracts import FUNNEL_TABLE, QC_REPORT, WorkPaths, read_run_info, run_work_folder
from kneepain.evaluate.provenance import software_versions, synthetic_evidence
from kneepain.evaluate.tables import comparison_rows, fmt, fmt_auc, subgroup_rows
from kneepain.fileio import write_text

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
CAM_GALLERY_LIMIT = 12  # overlays shown; the full set stays in cam/overlays/


@dataclass
class Section:
    """One part of the report: a title, and either content or the reason it is absent."""

    key: str
    title: str
    missing: str = ""  # e.g. "ingest was not run (WORK/ingest/funnel.csv not found)"
    tables: list[str] = field(default_factory=list)  # HTML produced by pandas (escaped)
    images: list[dict[str, str]] = field(default_factory=list)  # {id, src, alt, caption}
    lines: list[str] = field(default_factory=list)  # plain text paragraphs (escaped by jinja)
    pre: str = ""


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI, so the HTML needs nothing beside it."""
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower(), "")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def html_table(frame: pd.DataFrame) -> str:
    """A table as escaped HTML (pandas), NaN shown as an en dash."""
    return frame.to_html(index=False, escape=True, na_rep="–", border=0, classes="table")


def _read_csv(path: Path, section: Section) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"subject_id": str})
    except (OSError, ValueError) as error:
        section.missing = f"{path} could not be read: {error}"
        return None


def _show_table(section: Section, frame: pd.DataFrame) -> None:
    section.tables.append(html_table(frame))


def _csv_section(
    key: str,
    title: str,
    path: Path,
    stage: str,
    show: Callable[[Section, pd.DataFrame], None] = _show_table,
) -> Section:
    """A section shown from one CSV a stage wrote; absent, it names the stage; unreadable, the error."""
    section = Section(key, title)
    if not path.exists():
        section.missing = f"{stage} was not run ({path} not found)."
        return section
    frame = _read_csv(path, section)
    if frame is not None:
        show(section, frame)
    return section


def _summary_section(metrics: dict[str, Any] | None, evaluation: Path) -> Section:
    section = Section("summary", "Headline numbers")
    if metrics is None:
        section.missing = (
            f"evaluate was not run ({evaluation / 'metrics.json'} not found): kneepain evaluate RUN"
        )
        return section
    nan = math.nan

    def num(value: Any) -> float:
        return nan if value is None else float(value)

    delong = [num(v) for v in metrics.get("auc_ci_delong", [None, None])]
    boot = [num(v) for v in metrics.get("auc_ci_bootstrap", [None, None])]
    youden = metrics.get("youden", {})
    rows = [
        (
            "Subjects (right / left painful)",
            f"{metrics['n']} ({metrics['n_right_painful']} / {metrics['n_left_painful']})",
        ),
        ("AUC, DeLong 95% CI", fmt_auc(num(metrics.get("auc")), *delong)),
        (
            "AUC, bootstrap 95% CI",
            f"{fmt_auc(num(metrics.get('auc')), *boot)} ({metrics['bootstrap']['n_used']} of "
            f"{metrics['bootstrap']['n_resamples']} subject resamples, seed {metrics['bootstrap']['seed']})",
        ),
        ("Youden threshold on prob_right", fmt(num(youden.get("threshold")))),
        (
            "Accuracy / sensitivity / specificity at it",
            " / ".join(fmt(num(youden.get(k))) for k in ("accuracy", "sensitivity", "specificity")),
        ),
        ("Brier score", fmt(num(metrics.get("brier")))),
        ("Subjects excluded from evaluation", str(len(metrics.get("excluded", [])))),
    ]
    section.tables.append(html_table(pd.DataFrame(rows, columns=["Quantity", "Value"])))
    section.lines.append(
        "Positive class: right knee painful (label 1); sensitivity = right-painful knees called right."
    )
    if metrics.get("excluded"):
        section.tables.append(html_table(pd.DataFrame(metrics["excluded"])))
    return section


def _image_section(key: str, title: str, image: Path, missing: str, caption: str = "") -> Section:
    section = Section(key, title)
    if image.exists():
        section.images.append(
            {"id": f"{key}-image", "src": data_uri(image), "alt": title, "caption": caption}
        )
    else:
        section.missing = missing
    return section


def _show_subgroups(section: Section, table: pd.DataFrame) -> None:
    table["note"] = table["note"].fillna("")
    header, rows = subgroup_rows(table)
    section.tables.append(html_table(pd.DataFrame(rows, columns=header)))
    if table["reduced"].astype(bool).any():
        section.lines.append(
            "* n reduced: the variable (e.g. KL grade) is missing for some subjects; see Note."
        )


def _show_comparisons(section: Section, table: pd.DataFrame) -> None:
    if table.empty:
        section.missing = "No comparison was requested: kneepain evaluate RUN --compare OTHER_RUN."
        return
    table["differs"] = table["differs"].fillna("")
    header, rows = comparison_rows(table)
    section.tables.append(html_table(pd.DataFrame(rows, columns=header)))
    section.lines.append(
        "DeLong's paired test on the subjects both runs predicted; Δ AUC = other − run; "
        "dropped = subjects only in the run + only in the other."
    )


def _show_qc_reasons(section: Section, frame: pd.DataFrame) -> None:
    section.lines.append(f"{len(frame)} rows in {QC_REPORT}.")
    for column in [c for c in frame.columns if "reason" in c.lower()]:
        reasons = frame[column].dropna().astype(str)
        counts = reasons[reasons != ""].value_counts().rename_axis(column).reset_index(name="knees")
        if not counts.empty:
            section.tables.append(html_table(counts))


def _cam_section(run_dir: Path) -> Section:
    section = Section("cam", "Class activation maps (gallery)")
    index_path, overlays = run_dir / "cam" / "index.csv", run_dir / "cam" / "overlays"
    if not index_path.exists() or not overlays.is_dir():
        section.missing = f"cam was not run ({index_path} not found)."
        return section
    index = _read_csv(index_path, section)
    if index is None:
        return section
    shown = 0
    for row in index.to_dict(orient="records"):
        side = row.get("painful_side") or ("right" if row.get("label") == 1 else "left")
        image = overlays / f"{row.get('subject_id')}_{side}.png"
        if not image.exists():
            continue
        prob = row.get("prob_right")
        caption = f"{row.get('subject_id')}, painful knee {side}"
        if isinstance(prob, float) and math.isfinite(prob):
            caption += f", prob_right {prob:.2f}"
        if isinstance(row.get("predicted_side"), str):
            caption += f", predicted {row['predicted_side']}"
        section.images.append(
            {"id": f"cam-{shown}", "src": data_uri(image), "alt": caption, "caption": caption}
        )
        shown += 1
        if shown == CAM_GALLERY_LIMIT:
            break
    section.lines.append(f"{shown} of {len(index)} subjects shown; all overlays are in {overlays}.")
    _show_localization(section, run_dir / "cam" / "localization.json")
    lesions = run_dir / "cam" / "lesion_table.csv"
    if lesions.exists():
        table = _read_csv(lesions, section)
        if table is not None:
            section.lines.append(
                "Table above: lesions under the most activated region (the cam stage's lesion_table.csv)."
            )
            section.tables.append(html_table(table))
    return section


LOCALIZATION_ROWS = (
    ("backbone", "backbone", "{}"),
    ("map_size", "CAM grid (cells)", "{0[0]} x {0[1]}"),
    ("area_above_half_pct_mean", "area above 0.5, % of slice (mean)", "{:.1f}"),
    ("area_above_half_pct_sd", "area above 0.5, % of slice (SD)", "{:.1f}"),
    ("pointing_hit_rate_correct", "pointing game, correctly predicted subjects", "{:.1%}"),
    ("pointing_n_correct", "correctly predicted subjects measured", "{}"),
    ("pointing_hit_rate_all", "pointing game, all measured subjects", "{:.1%}"),
    ("energy_share_slice_mean", "share of CAM energy inside lesions (best slice)", "{:.1%}"),
    ("pointing_hit_rate_correct_difference", "pointing game, painful minus other knee map", "{:.1%}"),
    ("energy_share_slice_mean_difference", "energy inside lesions, painful minus other knee map", "{:.1%}"),
    (
        "pointing_hit_rate_correct_ours",
        "pointing game, ours (difference map, neighbouring slices, global peak)",
        "{:.1%}",
    ),
    ("pointing_hit_rate_correct_ours_ci95", "ours, Wilson 95% interval", "{0[0]:.1%} to {0[1]:.1%}"),
    ("pointing_hit_rate_correct_constant", "CAM-free baseline: one fixed point (leave one out)", "{:.1%}"),
    (
        "ours_vs_constant_correct",
        "ours against the fixed point, same subjects (exact McNemar)",
        "only ours hits {0[ours_only]:g}, only the point {0[baseline_only]:g}, p = {0[p_value]:.3g}",
    ),
    ("pointing_hit_rate_correct_prior", "pointing game, ours + the other folds' evidence prior", "{:.1%}"),
    ("pointing_hit_rate_correct_prior_ci95", "ours + prior, Wilson 95% interval", "{0[0]:.1%} to {0[1]:.1%}"),
    (
        "prior_vs_constant_correct",
        "ours + prior against the fixed point (exact McNemar)",
        "only ours + prior hits {0[ours_only]:g}, only the point {0[baseline_only]:g}, p = {0[p_value]:.3g}",
    ),
    ("pointing_hit_rate_correct_chance", "CAM-free baseline: random point (expected)", "{:.1%}"),
    ("tolerance_cells", "pointing tolerance (CAM cells)", "{}"),
    ("excluded", "subjects not measured (reason in localization.csv)", "{}"),
)


def _show_localization(section: Section, path: Path) -> None:
    """The cam stage's localization.json as a table: what the hot spots point at, against truth masks."""
    if not path.exists():
        section.lines.append(f"Localization was not measured ({path} not found).")
        return
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        section.lines.append(f"{path}: unreadable ({error}).")
        return
    rows = []
    for key, label, pattern in LOCALIZATION_ROWS:
        value = summary.get(key)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        rows.append((label, pattern.format(value)))
    skipped = summary.get("localization_skipped")
    section.lines.append(
        f"Localization not measured against truth: {skipped}."
        if skipped
        else "Localization against the synthetic generator's lesion masks (cam/localization.json):"
    )
    section.tables.append(html_table(pd.DataFrame(rows, columns=["measure", "value"])))


def _configuration_section(run_info: dict[str, Any], metrics: dict[str, Any] | None) -> Section:
    section = Section("configuration", "Configuration and software")
    versions = software_versions()
    rows = [
        (name, version, (metrics or {}).get("software", {}).get(name, "–"))
        for name, version in versions.items()
    ]
    section.tables.append(html_table(pd.DataFrame(rows, columns=["Software", "Report", "Evaluation"])))
    if metrics is not None:
        section.lines.append(f"Evaluation options: {json.dumps(metrics.get('options', {}), sort_keys=True)}")
    section.pre = (
        json.dumps(run_info, indent=2, sort_keys=True, default=str) if run_info else "run.json not found."
    )
    return section


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's self-contained HTML report (default ``RUN/report.html``); returns its path."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    run_dir = Path(run_dir)
    run_info = read_run_info(run_dir)
    work = run_work_folder(run_dir, run_info)
    evaluation = run_dir / "evaluation"
    metrics_path = evaluation / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.exists() else None
    evidence = list(metrics.get("synthetic_evidence", [])) if metrics else []
    evidence += [e for e in synthetic_evidence(run_info, work) if e not in evidence]
    ingest = WorkPaths(work).ingest
    table1 = ingest / "table1.csv"
    table1_section = _csv_section("table1", "Table 1: cohort characteristics", table1, "ingest")
    if not table1.exists() and (ingest / "table1.md").exists():
        table1_section = Section(
            "table1", "Table 1: cohort characteristics", pre=(ingest / "table1.md").read_text()
        )
    brier = fmt(metrics["brier"]) if metrics and metrics.get("brier") is not None else "–"
    sections = [
        _summary_section(metrics, evaluation),
        _csv_section("funnel", "Cohort funnel", ingest / FUNNEL_TABLE, "ingest"),
        table1_section,
        _csv_section("split-balance", "Split balance", run_dir / "split_balance.csv", "the cv/train stage"),
        _csv_section(
            "qc",
            "Preprocessing quality control",
            WorkPaths(work).preprocess / QC_REPORT,
            "preprocess",
            _show_qc_reasons,
        ),
        _image_section(
            "roc",
            "ROC curves (the paper's Figure 4A/B)",
            evaluation / "roc.png",
            f"evaluate was not run ({evaluation / 'roc.png'} not found).",
            "Out-of-fold predictions; legend: AUC with DeLong 95% CI.",
        ),
        _csv_section(
            "subgroups",
            "Subgroups (the paper's Figure 4C)",
            evaluation / "subgroups.csv",
            "evaluate",
            _show_subgroups,
        ),
        _csv_section(
            "comparisons",
            "Paired comparisons between runs",
            evaluation / "comparisons.csv",
            "evaluate",
            _show_comparisons,
        ),
        _image_section(
            "calibration",
            "Calibration",
            evaluation / "calibration.png",
            f"evaluate was not run ({evaluation / 'calibration.png'} not found).",
            f"Reliability curve, 10 equal-width bins of prob_right; Brier score {brier}.",
        ),
        _cam_section(run_dir),
        _configuration_section(run_info, metrics),
    ]
    templates = Path(__file__).parent / "templates"
    env = Environment(loader=FileSystemLoader(templates), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template(TEMPLATE).render(
        run=run_dir.name,
        run_dir=str(run_dir.resolve()),
        work=str(work),
        synthetic=bool(evidence),
        evidence=evidence,
        sections=sections,
    )
    target = Path(out) if out else run_dir / REPORT_FILE
    write_text(target, html)
    return target
