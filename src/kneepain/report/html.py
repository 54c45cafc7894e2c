"""Build ``RUN/report.html``: one self-contained file (figures embedded as base64 data URIs).

The report only shows what the stages wrote; it computes nothing but formatting. Every section is
optional: when its input file is absent the section says which stage was not run. Tables get
human headers and p-values as a reader expects them (0.012, <0.001); each figure carries the share
of its width its plotting area fills (``data-plot-width-fraction``, from the layout record the
stage wrote beside it), so a test can hold every figure to a plot that fills it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kneepain.cam.overlay import overlay_layout
from kneepain.contracts import (
    FUNNEL_TABLE,
    QC_AUDIT_TABLE,
    QC_REPORT,
    WorkPaths,
    read_run_info,
    run_work_folder,
)
from kneepain.evaluate.provenance import software_versions, synthetic_evidence
from kneepain.evaluate.tables import comparison_rows, describe_run, fmt, fmt_auc, fmt_p, subgroup_rows
from kneepain.fileio import write_text

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
CAM_GALLERY_LIMIT = 8  # cases shown from the per-knee overlays when the cam stage wrote no gallery
LAYOUT_SUFFIX = ".layout.json"  # kneepain.evaluate.figures writes it beside each figure

HEADERS = {
    "step": "Step",
    "n": "N",
    "left_pain": "Left knee painful",
    "right_pain": "Right knee painful",
    "group": "Cohort",
    "parameter": "Parameter",
    "p_value": "p",
    "test": "Test",
    "p_value_paper_method": "p, paper's method †",
    "method": "Test",
    "train": "Train",
    "validation": "Validation",
    "subject_id": "Participant",
    "reason": "Reason",
    "lesion": "Lesion under the hot spot",
    "percent": "% of measured",
    "correct": "Correct predictions",
    "wrong": "Wrong predictions",
    "characteristic": "Characteristic",
    "value": "Value",
}
LESION_WORDS = {
    "effusion_synovitis": "effusion-synovitis",
    "bone_marrow_lesion": "bone marrow lesion",
    "hoffa_synovitis": "Hoffa synovitis",
    "cartilage_loss": "cartilage loss",
    "meniscal_damage": "meniscal damage",
    "none": "no lesion",
    "total": "all measured",
}


@dataclass
class Section:
    """One part of the report: a title, and either its blocks (in reading order) or why it is absent.

    A block is a dict with ``kind``: ``p`` (text), ``note`` (small print under a table), ``table``
    (HTML made by pandas, escaped), ``figures`` (a row of figures), ``gallery`` (a titled group
    of zoomable figures) or ``pre`` (preformatted text).
    """

    key: str
    title: str
    missing: str = ""  # e.g. "ingest was not run (WORK/ingest/funnel.csv not found)"
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def text(self, line: str, kind: str = "p") -> None:
        self.blocks.append({"kind": kind, "text": line})

    def table(
        self,
        frame: pd.DataFrame,
        caption: str = "",
        note: str = "",
        *,
        collapsed: bool = False,
        css: str = "",
    ) -> None:
        """Add a table; ``collapsed`` puts it in a closed <details> named by its caption."""
        block = {"kind": "table", "html": html_table(frame, css), "caption": caption, "note": note}
        self.blocks.append({**block, "collapsed": collapsed})


def data_uri(path: Path) -> str:
    """The file as a ``data:`` URI, so the HTML needs nothing beside it."""
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}.get(path.suffix.lower(), "")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def human_header(column: str) -> str:
    """A column name as a reader says it: known names from HEADERS, else snake_case as words."""
    if column in HEADERS:
        return HEADERS[column]
    words = str(column).replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def human_cell(column: str, value: Any) -> Any:
    """A cell as a reader wants it: p-values 0.012 / <0.001, lesion codes as words, NaN as blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if str(column).startswith("p_value"):
        try:
            return fmt_p(float(value))
        except ValueError:
            return value
    if (
        isinstance(value, str)
        and value in LESION_WORDS
        and column in ("lesion", "lesion_ours", "lesion_prior")
    ):
        return LESION_WORDS[value]
    return value


def humanize(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with human headers and cells (see :func:`human_header`, :func:`human_cell`)."""
    shown = pd.DataFrame({column: [human_cell(column, v) for v in frame[column]] for column in frame.columns})
    return shown.rename(columns={c: human_header(c) for c in frame.columns})


def html_table(frame: pd.DataFrame, css: str = "") -> str:
    """A table as escaped HTML (pandas), missing values shown as an en dash."""
    return frame.to_html(index=False, escape=True, na_rep="–", border=0, classes=f"table {css}".strip())


def _read_csv(path: Path, section: Section) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path, dtype={"subject_id": str})
    except (OSError, ValueError) as error:
        section.missing = f"{path} could not be read: {error}"
        return None


def _show_table(section: Section, frame: pd.DataFrame) -> None:
    section.table(humanize(frame))


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
    boot_run = metrics["bootstrap"]
    rows = [
        (
            "Participants (right / left knee painful)",
            f"{metrics['n']} ({metrics['n_right_painful']} / {metrics['n_left_painful']})",
        ),
        ("AUC (DeLong 95% CI)", fmt_auc(num(metrics.get("auc")), *delong)),
        (
            "AUC (bootstrap 95% CI)",
            f"{fmt_auc(num(metrics.get('auc')), *boot)}: {boot_run['n_used']} of "
            f"{boot_run['n_resamples']} resamples of participants, seed {boot_run['seed']}",
        ),
        ("Youden threshold on the probability right knee painful", fmt(num(youden.get("threshold")))),
        (
            "Accuracy / sensitivity / specificity at that threshold",
            " / ".join(fmt(num(youden.get(k))) for k in ("accuracy", "sensitivity", "specificity")),
        ),
        ("Brier score", fmt(num(metrics.get("brier")))),
        ("Participants excluded from evaluation", str(len(metrics.get("excluded", [])))),
    ]
    section.table(
        pd.DataFrame(rows, columns=["Quantity", "Value"]),
        note="Positive class: right knee painful (label 1); sensitivity = right-painful knees called right.",
    )
    if metrics.get("excluded"):
        excluded = pd.DataFrame(metrics["excluded"])
        first = [c for c in ("subject_id", "reason") if c in excluded.columns]
        excluded = excluded[first + [c for c in excluded.columns if c not in first]]
        section.table(humanize(excluded), caption="Excluded from evaluation")
    return section


def figure_layout(image: Path) -> dict[str, str]:
    """The layout record the stage wrote beside a figure: its width in pixels and the share of it
    the plotting area fills (empty when there is none)."""
    record = image.with_name(image.stem + LAYOUT_SUFFIX)
    try:
        layout = json.loads(record.read_text(encoding="utf-8"))
        return {"plot_fraction": str(layout["plot_width_fraction"]), "width_px": str(layout["width_px"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _figure(
    key: str, image: Path, alt: str, caption: str, layout: dict[str, str] | None = None
) -> dict[str, str]:
    """One figure for the template; ``layout`` (plot_fraction, width_px) overrides the record beside it."""
    return {
        "id": key,
        "src": data_uri(image),
        "alt": alt,
        "caption": caption,
        **(layout or figure_layout(image)),
    }


def _image_section(key: str, title: str, image: Path, missing: str, caption: str = "") -> Section:
    section = Section(key, title)
    if image.exists():
        section.blocks.append(
            {"kind": "figures", "figures": [_figure(f"{key}-image", image, title, caption)]}
        )
    else:
        section.missing = missing
    return section


def _cohort_size_section(metrics: dict[str, Any] | None, evaluation: Path) -> Section:
    """The run over the project's synthetic learning curve (evaluate's cohort_size.png)."""
    reference = (metrics or {}).get("cohort_size_reference")
    image = evaluation / "cohort_size.png"
    if not reference or not image.exists():
        section = Section("cohort_size", "AUC against cohort size")
        section.missing = (
            f"no learning curve to compare with ({image} not found: evaluate was not run, or this "
            "installation carries no kneepain/evaluate/learning_curve.json)."
        )
        return section
    caption = str(reference.get("caption", ""))  # written by evaluate (cohort_size.py)
    return _image_section("cohort_size", "AUC against cohort size", image, "", caption)


def _show_subgroups(section: Section, table: pd.DataFrame) -> None:
    table["note"] = table["note"].fillna("")
    header, rows = subgroup_rows(table)
    note = "AUC with DeLong 95% CI within each subgroup of the out-of-fold predictions."
    if table["reduced"].astype(bool).any():
        note += " * n reduced: the variable (e.g. KL grade) is missing for some participants; see Note."
    section.table(pd.DataFrame(rows, columns=header), note=note)


def _show_comparisons(section: Section, table: pd.DataFrame) -> None:
    """One two-column table per compared run (eight columns side by side do not fit a phone)."""
    if table.empty:
        section.missing = "No comparison was requested: kneepain evaluate RUN --compare OTHER_RUN."
        return
    table["differs"] = table["differs"].fillna("")
    header, rows = comparison_rows(table)
    for row in rows:
        section.table(
            pd.DataFrame({"Quantity": header[2:], "Value": row[2:]}),
            caption=f"{row[0]} compared with {row[1]}",
            css="comparisons",
        )
    section.text(
        "DeLong's paired test on the participants both runs predicted; Δ AUC = other − run; "
        "dropped = participants only in the run + only in the other.",
        "note",
    )


def _show_table1(section: Section, table: pd.DataFrame) -> None:
    """Table 1, one table per cohort (Model A, Model B), so that it fits a phone's width."""
    groups = table.groupby("group", sort=False) if "group" in table.columns else [("", table)]
    for group, rows in groups:
        caption = f"{group} cohort" if group else ""
        section.table(humanize(rows.drop(columns=["group"], errors="ignore")), caption=caption)
    section.text(
        kind="note",
        line="p: Fisher's exact test on (female, male) × (left, right) for sex; the t-test named for age "
        "and BMI. † p, paper's method: the same comparison computed as the paper did, to check its "
        "printed values: Fisher's test on (female, all participants) × (left, right), which reproduces "
        "the paper's sex p-values, and Student's t-test for age and BMI.",
    )


REASON_DETAIL = re.compile(r"\s*\([^)]*\)\s*$")  # "(score 0.21 > 0.08)": one knee's measurement


def qc_reason_counts(reasons: pd.Series) -> pd.DataFrame:
    """Failed knees counted by check ('motion: ghosting ... (score 0.21 > 0.08)' counts under motion),
    with the first knee's description of it as an example."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for text in reasons:
        for part in [p.strip() for p in text.split(";") if p.strip()] or ["(no reason recorded)"]:
            check, _, detail = part.partition(":")
            name = check.strip().replace("_", " ")
            counts[name] = counts.get(name, 0) + 1
            examples.setdefault(name, REASON_DETAIL.sub("", detail).strip())
    rows = sorted(counts, key=lambda name: (-counts[name], name))
    return pd.DataFrame(
        {"Check failed": rows, "Knees": [counts[n] for n in rows], "Example": [examples[n] for n in rows]}
    )


def _decision(passed: Any, reason: Any) -> str:
    ok = str(passed).strip().lower() in ("true", "1", "1.0")
    text = "" if pd.isna(reason) else str(reason).strip()
    return "pass" if ok else f"fail: {text}" if text else "fail"


def _show_qc(section: Section, frame: pd.DataFrame, audit_path: Path | None = None) -> None:
    """Why knees failed QC (final decisions, counted by reason), the manual decisions that
    changed an automatic one, side by side (nothing twice), and the audit against the pain label."""
    reasons = (
        frame["qc_reason"].fillna("").astype(str) if "qc_reason" in frame else pd.Series("", frame.index)
    )
    if "qc_pass" in frame:
        passed = frame["qc_pass"].astype(str).str.lower().isin(["true", "1", "1.0"])
    else:  # an older qc.csv: a knee failed when it has a reason
        passed = reasons.str.strip() == ""
    section.text(f"{int(passed.sum())} of {len(frame)} knees passed quality control.")
    failed = reasons[~passed]
    if len(failed):
        section.table(
            qc_reason_counts(failed),
            note="A knee failing for several reasons counts under each; every knee's measurements are in "
            "preprocess/qc.csv.",
        )
    if {"auto_pass", "auto_reason", "manual"} <= set(frame.columns):
        manual = frame[frame["manual"].astype(object).fillna("").astype(str) != ""]
        automatic = [_decision(r.auto_pass, r.auto_reason) for r in manual.itertuples()]
        final = [_decision(r.qc_pass, r.qc_reason) for r in manual.itertuples()]
        differ = [a.split(":")[0] != f.split(":")[0] for a, f in zip(automatic, final, strict=True)]
        if any(differ):
            changed = pd.DataFrame(
                {
                    "Participant": manual["subject_id"],
                    "Knee": manual["side"],
                    "Automatic decision": automatic,
                    "Manual decision": final,
                }
            )[differ]
            section.table(
                changed,
                caption="Manual decisions that changed the automatic one",
                note="Only knees whose manual pass or fail differs from the automatic check are listed "
                "(preprocess --qc-overrides); every other knee kept its automatic decision.",
            )
        else:
            section.text("No manual QC decision differs from the automatic one.")
    if audit_path is not None:
        _show_template_frame(section, audit_path.parent / "template.json")
        _show_qc_audit(section, audit_path)


def _show_template_frame(section: Section, template_json: Path) -> None:
    """Which frame the registration template is in (preprocess/template.json): the anatomical one
    (tibial landmarks) or, when the landmarks were not found, the group's mean frame and why."""
    try:
        frame = json.loads(template_json.read_text(encoding="utf-8")).get("anatomical_frame")
    except (OSError, ValueError):
        return
    if not frame:
        return
    if frame.get("status") == "found":
        section.text(
            "Registration frame: anatomical (the template's tibial plateau levelled, its eminence as the "
            f"centre; tilt {fmt(frame.get('plateau_angle_deg'), 2)} deg removed)."
        )
    else:
        reason = frame.get("reason", "no reason given")
        section.text(
            f"Registration frame: the anatomical landmarks were not found ({reason}); "
            "the template keeps the group's mean frame (preprocess/template.json). Knees are aligned with "
            "each other as before; only the frame's absolute tilt and position are the group's mean pose."
        )


def _show_qc_audit(section: Section, audit_path: Path) -> None:
    """The QC audit against the pain label (preprocess/qc_audit.csv): only rules that excluded
    anyone, with a plain warning when an exclusion depends on pain."""
    if not audit_path.exists():
        section.text(f"No QC audit against the pain label ({audit_path} not found: preprocess predates it).")
        return
    audit = pd.read_csv(audit_path)
    audit = audit[(audit["excluded_a"] + audit["excluded_b"]) > 0]
    if audit.empty:
        section.text("QC audit against the pain label: no knee was excluded, so no rule can depend on pain.")
        return
    dependent = audit["label_dependent"].astype(str).str.lower().isin(["true", "1"])
    if dependent.any():
        rules = ", ".join(sorted(set(audit.loc[dependent, "rule"])))
        section.text(
            f"Warning: exclusions by {rules} depend on the pain label; the cohort left after QC is "
            "biased. Review these knees and re-admit the wrongly excluded ones (preprocess --qc-overrides).",
            "verdict",
        )
    else:
        section.text("No QC exclusion depends on the pain label (table below).")

    groups = {
        "painful vs other knee": ("Painful knees", "Other knees", "Knees: painful vs the other knee"),
        "Model A label 1 vs 0": ("Right painful", "Left painful", "Model A participants: by painful side"),
    }
    for comparison, (first, second, caption) in groups.items():
        rows = audit[audit["comparison"] == comparison]
        if rows.empty:
            continue
        table = pd.DataFrame(
            {
                "Rule": rows["rule"].str.replace("_", " "),
                f"{first} excluded": [
                    f"{a}/{n}" for a, n in zip(rows["excluded_a"], rows["n_a"], strict=True)
                ],
                f"{second} excluded": [
                    f"{b}/{n}" for b, n in zip(rows["excluded_b"], rows["n_b"], strict=True)
                ],
                "Rate ratio": ["∞" if math.isinf(r) else fmt(r, 2) for r in rows["rate_ratio"]],
                "p": [fmt_p(v) for v in rows["p_value"]],
                "Depends on pain": ["yes" if d else "no" for d in dependent[rows.index]],
            }
        )
        section.table(table, caption=f"QC audit against the pain label. {caption}")
    section.text(
        "Rate ratio: first group's exclusion rate over the second's. For participants, one counts as "
        "excluded when either knee is. p: Fisher's exact test. A rule depends on pain when p < 0.05, or "
        "when its rate ratio is beyond 1.5 either way with at least 5 exclusions. Exclusions that follow "
        "pain remove, for example, painful knees with effusion, and leave the easy cases.",
        "note",
    )


def _split_balance_section(run_dir: Path, evaluation: Path) -> Section:
    """The run's split balance: `kneepain split`'s table, or the evaluate stage's per-fold table."""
    section = Section("split-balance", "Split balance")
    split_table, fold_table = run_dir / "split_balance.csv", evaluation / "fold_balance.csv"
    if split_table.exists():
        frame = _read_csv(split_table, section)
        if frame is not None:
            section.table(
                humanize(frame),
                note="The 70/15/15 split stratified by sex, age and BMI (the paper's Table 2); p across the "
                "three parts.",
            )
        return section
    if not fold_table.exists():
        section.missing = (
            f"evaluate was not run ({fold_table} not found; a cross-validation run gets it from "
            "kneepain evaluate RUN, a split run from kneepain split)."
        )
        return section
    frame = _read_csv(fold_table, section)
    if frame is None:
        return section

    def mean_sd(mean: float, sd: float) -> str:
        return "–" if pd.isna(mean) else f"{mean:.1f}" if pd.isna(sd) else f"{mean:.1f} ± {sd:.1f}"

    shown = pd.DataFrame(
        {
            "Fold": frame["fold"],
            "Part": frame["part"],
            "N": frame["n"],
            "Right painful %": frame["right_painful_pct"].map(lambda v: f"{v:.0f}"),
            "Women %": frame["women_pct"].map(lambda v: f"{v:.0f}"),
            "Age, years": [mean_sd(m, s) for m, s in zip(frame["age_mean"], frame["age_sd"], strict=True)],
            "BMI, kg/m²": [mean_sd(m, s) for m, s in zip(frame["bmi_mean"], frame["bmi_sd"], strict=True)],
        }
    )
    section.table(
        shown,
        note="Per fold of the cross-validation: test = the participants that fold's model predicted (never "
        "trained on); validation = held out of training to choose the epoch (early stopping); train = "
        "the rest. Age and BMI as mean ± SD.",
    )
    return section


# --- the CAM section ------------------------------------------------------------------------------

GALLERY_INTRO = (
    "Each case: both knees at the slice the paper's rule picks (the painful knee's slice with the "
    "highest mean CAM), on one colour scale, with the paper's hot spot (+) on the painful knee; then "
    "our rule (the painful minus the other knee's map, smoothed over neighbouring slices) and ours + "
    "the other folds' evidence prior, each at its own slice. The white square around each + is the "
    "pointing game's reach: a true lesion pixel inside it counts as a hit."
)
TRUTH_NOTE = " Green: the true lesion outline of the painful knee (the synthetic generator's truth)."


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def _hit_words(row: dict[str, Any]) -> str:
    rules = (("hit_paper", "paper's rule"), ("hit_ours", "ours"), ("hit_prior", "ours + prior"))
    words = [
        f"{name} {'hit' if _truthy(row[key]) else 'miss'}" for key, name in rules if not pd.isna(row[key])
    ]
    return f" Hot spot on a true lesion: {', '.join(words)}." if words else ""


def _case_caption(row: dict[str, Any]) -> str:
    prob = row.get("prob_right")
    chance = f" (probability right {float(prob):.2f})" if not pd.isna(prob) else ""
    verdict = "correct" if _truthy(row.get("correct")) else "wrong"
    hits = _hit_words(row) if _truthy(row["truth"]) else ""
    return (
        f"Participant {row['subject_id']}, fold {row['fold']}: painful knee {row['painful_side']}, "
        f"predicted {row['predicted_side']}{chance}, {verdict}.{hits}"
    )


def _gallery_blocks(cam_dir: Path, section: Section) -> bool:
    """The cam stage's gallery (correct and wrong cases) as two zoomable figure groups; False if absent."""
    table_path, folder = cam_dir / "gallery.csv", cam_dir / "gallery"
    if not table_path.exists() or not folder.is_dir():
        return False
    gallery = _read_csv(table_path, section)
    if gallery is None or gallery.empty:
        return False
    intro = GALLERY_INTRO + (TRUTH_NOTE if gallery["truth"].map(_truthy).any() else "")
    section.text(intro + " Click a figure to enlarge it.")
    for verdict, title in ((True, "Correct predictions"), (False, "Wrong predictions")):
        cases = [r for r in gallery.to_dict(orient="records") if _truthy(r["correct"]) == verdict]
        figures = [
            _figure(
                f"case-{row['subject_id']}",
                folder / str(row["file"]),
                f"CAM case figure, participant {row['subject_id']}",
                _case_caption(row),
                {"plot_fraction": str(row["plot_width_fraction"]), "width_px": str(row["width_px"])},
            )
            for row in cases
            if (folder / str(row["file"])).exists()
        ]
        if figures:
            section.blocks.append({"kind": "gallery", "title": title, "figures": figures})
    return True


def _overlay_blocks(cam_dir: Path, index: pd.DataFrame, section: Section) -> None:
    """Runs whose cam stage wrote no gallery: both knees' overlays of the first cases, side by side."""
    figures = []
    for row in index.to_dict(orient="records"):
        images = [cam_dir / "overlays" / f"{row.get('subject_id')}_{side}.png" for side in ("left", "right")]
        if not all(image.exists() for image in images):
            continue
        side = row.get("painful_side") or ("right" if row.get("label") == 1 else "left")
        caption = f"Participant {row.get('subject_id')}, painful knee {side}"
        if isinstance(row.get("predicted_side"), str):
            caption += f", predicted {row['predicted_side']}"
        for image, knee in zip(images, ("left", "right"), strict=True):
            figures.append(
                _figure(
                    f"cam-{len(figures)}",
                    image,
                    f"CAM overlay, {knee} knee",
                    f"{caption}: {knee} knee.",
                    overlay_layout(),
                )
            )
        if len(figures) == 2 * CAM_GALLERY_LIMIT:
            break
    section.text(
        "Both knees of each case at the painful knee's best slice, one colour scale: the map alone, and "
        "over the MRI with its maximum marked. Click a figure to enlarge it."
    )
    section.blocks.append({"kind": "gallery", "title": "", "figures": figures, "pairs": True})


def _cam_section(run_dir: Path) -> Section:
    section = Section("cam", "Class activation maps")
    cam_dir = run_dir / "cam"
    index_path = cam_dir / "index.csv"
    if not index_path.exists():
        section.missing = f"cam was not run ({index_path} not found)."
        return section
    index = _read_csv(index_path, section)
    if index is None:
        return section
    _show_localization(section, cam_dir / "localization.json")
    if not _gallery_blocks(cam_dir, section) and (cam_dir / "overlays").is_dir():
        _overlay_blocks(cam_dir, index, section)
    section.text(f"All {len(index)} participants' overlays are in {cam_dir / 'overlays'}.", "note")
    lesions = cam_dir / "lesion_table.csv"
    if lesions.exists():
        table = _read_csv(lesions, section)
        if table is not None:
            section.table(
                humanize(table),
                caption="Lesion under the paper's hot spot, by prediction (the paper's Figure 3I)",
                note="Participants measured against truth; % of measured; from cam/lesion_table.csv.",
            )
    return section


RULES = (
    ("paper's rule: the painful knee's map, slice of highest mean", "pointing_hit_rate_correct", None, None),
    (
        "difference map (painful minus other), slice of highest mean",
        "pointing_hit_rate_correct_difference",
        None,
        None,
    ),
    (
        "ours: difference map smoothed over neighbouring slices, its peak",
        "pointing_hit_rate_correct_ours",
        "pointing_hit_rate_correct_ours_ci95",
        "ours_vs_constant_correct",
    ),
    (
        "ours + the other folds' evidence prior",
        "pointing_hit_rate_correct_prior",
        "pointing_hit_rate_correct_prior_ci95",
        "prior_vs_constant_correct",
    ),
    (
        "CAM-free: one fixed point (chosen on the other participants)",
        "pointing_hit_rate_correct_constant",
        None,
        None,
    ),
    ("CAM-free: a random point (expected)", "pointing_hit_rate_correct_chance", None, None),
)


POINTING_NOTE = (
    "Hit: a lesion pixel within {tolerance} CAM cell(s) of the hot spot. 95% CI: Wilson. Only this rule / "
    "only the point: participants one rule hits and the fixed point misses, and the reverse; p: exact "
    "McNemar test of those two counts. When several places tie as the fixed point, a participant counts "
    "by the expected hit over them, so a count can end in .5; the test takes the rounded counts."
)


def _pct(value: Any) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{100 * value:.1f}%"
    )


def _count(value: float) -> str:
    return f"{value:g}"


def _show_localization(section: Section, path: Path) -> None:
    """The cam stage's localization.json: each hot-spot rule's hit rate against the CAM-free ones."""
    if not path.exists():
        section.text(f"Localization was not measured ({path} not found).")
        return
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        section.text(f"{path}: unreadable ({error}).")
        return
    skipped = summary.get("localization_skipped")
    if skipped:
        section.text(f"Localization not measured against truth: {skipped}.")
    rows = []
    for name, key, interval_key, test_key in RULES:
        if summary.get(key) is None:
            continue
        interval = summary.get(interval_key) if interval_key else None
        test = summary.get(test_key) if test_key else None
        rows.append(
            (
                name,
                _pct(summary[key]),
                f"{_pct(interval[0])} to {_pct(interval[1])}" if interval else "",
                f"{_count(test['ours_only'])} / {_count(test['baseline_only'])}" if test else "",
                fmt_p(test["p_value"]) if test else "",
            )
        )
    if rows:
        n = summary.get("pointing_n_correct")
        section.table(
            pd.DataFrame(
                rows, columns=["Hot-spot rule", "Hit rate", "95% CI", "Only this rule / only the point", "p"]
            ),
            caption=f"Does the hot spot fall on a true lesion? Pointing game on the {n} correctly predicted "
            "participants measured against the synthetic generator's lesion masks",
            note=POINTING_NOTE.format(tolerance=summary.get("tolerance_cells", 1)),
        )
        verdict = _verdict(summary)
        if verdict:
            section.text(verdict, "verdict")
    extra = [
        ("CAM grid (cells)", "{0[0]} x {0[1]}", summary.get("map_size")),
        (
            "Area above 0.5 of the normalised map, % of the slice",
            None,
            summary.get("area_above_half_pct_mean"),
        ),
        ("Share of CAM energy inside lesions (paper's slice)", "pct", summary.get("energy_share_slice_mean")),
        ("Participants not measured (reason in cam/localization.csv)", "{}", summary.get("excluded")),
    ]
    rows = []
    for label, pattern, value in extra:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if pattern is None:
            sd = summary.get("area_above_half_pct_sd")
            text = f"{value:.1f} ± {sd:.1f}" if sd is not None else f"{value:.1f}"
        elif pattern == "pct":
            text = _pct(value)
        else:
            text = pattern.format(value)
        rows.append((label, text))
    if rows:
        section.table(pd.DataFrame(rows, columns=["Measure", "Value"]), caption="The maps themselves")


def _verdict(summary: dict[str, Any]) -> str:
    """One plain sentence: do the CAM rules beat the CAM-free fixed point on this run?"""
    point = summary.get("pointing_hit_rate_correct_constant")
    if point is None:
        return ""
    rules = {
        "the paper's rule": summary.get("pointing_hit_rate_correct"),
        "ours": summary.get("pointing_hit_rate_correct_ours"),
        "ours + prior": summary.get("pointing_hit_rate_correct_prior"),
    }
    rules = {name: rate for name, rate in rules.items() if rate is not None}
    better = [name for name, rate in rules.items() if rate > point]
    if not better:
        listed = ", ".join(f"{name} {_pct(rate)}" for name, rate in rules.items())
        return (
            f"On this run no CAM rule beats the CAM-free fixed point ({_pct(point)}): {listed}. "
            "The hot spots here say no more about where the lesion is than one fixed place does."
        )
    tests = {"ours": "ours_vs_constant_correct", "ours + prior": "prior_vs_constant_correct"}
    p_values = {name: (summary.get(key) or {}).get("p_value") for name, key in tests.items()}
    significant = [name for name in better if p_values.get(name) is not None and p_values[name] < 0.05]
    listed = ", ".join(
        f"{name} {_pct(rules[name])}"
        + (f" (p {fmt_p(p_values[name])})" if p_values.get(name) is not None else "")
        for name in better
    )
    if significant:
        return f"Beats the CAM-free fixed point ({_pct(point)}) beyond chance: {listed}."
    return (
        f"Above the CAM-free fixed point ({_pct(point)}) but not beyond chance: {listed}. "
        "On this run the hot spots are not shown to find lesions better than one fixed place."
    )


# --- configuration --------------------------------------------------------------------------------


def flatten(record: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as (dotted key, value) rows; lists joined with commas."""
    rows: list[tuple[str, str]] = []
    for key in sorted(record):
        value, name = record[key], f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            rows.append((name, ", ".join(str(v) for v in value)))
        else:
            rows.append((name, "–" if value is None else str(value)))
    return rows


def _configuration_section(run_info: dict[str, Any], metrics: dict[str, Any] | None) -> Section:
    section = Section("configuration", "Configuration and software")
    if run_info:
        rows = flatten(run_info)
        section.table(
            pd.DataFrame(rows, columns=["Setting", "Value"]),
            caption=f"Every setting of the run (run.json, {len(rows)} rows)",
            collapsed=True,
            css="settings",
        )
    else:
        section.text("run.json not found.")
    if metrics is not None:
        section.table(
            pd.DataFrame(flatten(metrics.get("options", {})), columns=["Evaluation option", "Value"]),
            css="settings",
        )
    versions = software_versions()
    rows = [
        (name, version, (metrics or {}).get("software", {}).get(name, "–"))
        for name, version in versions.items()
    ]
    section.table(pd.DataFrame(rows, columns=["Software", "Report", "Evaluation"]))
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
    table1_section = _csv_section("table1", "Table 1: cohort characteristics", table1, "ingest", _show_table1)
    if not table1.exists() and (ingest / "table1.md").exists():
        table1_section = Section("table1", "Table 1: cohort characteristics")
        table1_section.text((ingest / "table1.md").read_text(), "pre")
    brier = fmt(metrics["brier"]) if metrics and metrics.get("brier") is not None else "–"
    described = describe_run(run_info)
    roc_caption = (
        f"Out-of-fold predictions of run {run_dir.name}: each participant predicted by the model that did "
        "not train on them. Legend: AUC (DeLong 95% CI), n participants."
        + (f" The run: {described}; every setting is in the last section." if described else "")
    )
    sections = [
        _summary_section(metrics, evaluation),
        _csv_section("funnel", "Cohort funnel", ingest / FUNNEL_TABLE, "ingest"),
        table1_section,
        _split_balance_section(run_dir, evaluation),
        _csv_section(
            "qc",
            "Preprocessing quality control",
            WorkPaths(work).preprocess / QC_REPORT,
            "preprocess",
            lambda section, frame: _show_qc(section, frame, WorkPaths(work).preprocess / QC_AUDIT_TABLE),
        ),
        _image_section(
            "roc",
            "ROC curve (the paper's Figure 4A/B)",
            evaluation / "roc.png",
            f"evaluate was not run ({evaluation / 'roc.png'} not found).",
            roc_caption,
        ),
        _cohort_size_section(metrics, evaluation),
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
            f"Reliability curve: observed share of right-painful participants against the mean predicted "
            f"probability, 10 equal-width bins; below, participants per bin. Brier score {brier}.",
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
