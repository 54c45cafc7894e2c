"""The ingest stage: image tree + clinical files -> ``WORK/ingest/`` (series, cohort, funnel, Table 1).

Everything is computed before anything is written, and the folder is replaced whole
(``fileio.atomic_dir``), so a run that stops on bad input leaves the previous output intact.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from kneepain import fileio
from kneepain.contracts import COHORT_TABLE, FUNNEL_TABLE, SERIES_TABLE, WorkPaths
from kneepain.fileio import remove_stale_temporaries
from kneepain.ingest import IngestError
from kneepain.ingest.clinical import read_clinical, read_kl_grades
from kneepain.ingest.cohort import SelectionRules, funnel, select_cohort
from kneepain.ingest.dicom_scan import scan_series
from kneepain.ingest.table1 import table1, table1_markdown
from kneepain.workers import kill_point

TABLE1_CSV = "table1.csv"
TABLE1_MD = "table1.md"
INGEST_JSON = "ingest.json"
OUTPUT_FILES = (SERIES_TABLE, COHORT_TABLE, FUNNEL_TABLE, TABLE1_CSV, TABLE1_MD, INGEST_JSON)


def check_output_folder(work: Path) -> Path:
    """Refuse a work folder ingest cannot write without harm; return ``WORK/ingest``.

    Checked before any header is read: WORK must be a folder (or not exist yet), and an existing
    WORK/ingest/ must hold only what a previous ingest wrote (its ingest.json and tables), since
    the new output replaces that folder whole.
    """
    work = Path(work)
    if work.exists() and not work.is_dir():
        raise IngestError(f"{work}: --out is an existing file, not a folder; give a work folder path")
    target = WorkPaths(work).ingest
    if target.exists() and not target.is_dir():
        raise IngestError(
            f"{target}: is a file, not ingest's output folder; move it away or use another --out"
        )
    if target.is_dir():
        names = sorted(p.name for p in target.iterdir())
        foreign = [n for n in names if n not in OUTPUT_FILES]
        if names and (INGEST_JSON not in names or foreign):
            shown = ", ".join(repr(n) for n in (foreign or names)[:3])
            raise IngestError(
                f"{target}: holds files kneepain ingest did not write ({shown}); ingest replaces this "
                "folder whole, so move them away or choose another --out"
            )
    return target


def run_ingest(
    images: Path,
    clinical: Path,
    work: Path,
    *,
    index_csv: Path | None = None,
    rules: SelectionRules | None = None,
    visit: str = "00m",
    workers: int | None = None,
    equal_var: bool = False,
) -> dict[str, object]:
    """Run the whole ingest stage and return the counts it logged (also in ``ingest.json``)."""
    rules = rules or SelectionRules()
    target = check_output_folder(Path(work))
    remove_stale_temporaries(target.parent, (target.name,))
    kill_point("ingest:start")
    variables = read_clinical(
        Path(clinical),
        pain_right=rules.pain_right,
        pain_left=rules.pain_left,
        womac_right=rules.womac_right,
        womac_left=rules.womac_left,
    )
    kl, kl_path = read_kl_grades(Path(clinical))
    series, facts = scan_series(Path(images), visit=visit, index_csv=index_csv, workers=workers)
    kill_point("ingest:scanned")
    cohort = select_cohort(variables, kl, series, rules)
    steps = funnel(cohort)
    characteristics = table1(cohort, equal_var=equal_var)
    summary: dict[str, object] = {
        "participants": len(cohort),
        "unilateral": int(cohort["label"].notna().sum()),
        "model_a": int(cohort["model_a"].sum()),
        "model_b": int(cohort["model_b"].sum()),
        "series": len(series),
        "series_with_problems": int((series["problem"].fillna("") != "").sum()),
        "headers_read": facts["headers"],
    }
    record = {
        "images": str(Path(images).resolve()),
        "clinical_files": {k: str(v) for k, v in variables.files.items()} | {"kl": str(kl_path)},
        "visit": visit,
        "visit_dirs": facts["visit_dirs"],
        "index_csv": facts["index"],
        "rules": asdict(rules),
        "t_test": "student" if equal_var else "welch",
        "counts": summary,
    }
    with fileio.atomic_dir(target) as folder:
        fileio.write_csv(folder / SERIES_TABLE, series)
        kill_point("ingest:writing")
        fileio.write_csv(folder / COHORT_TABLE, cohort)
        fileio.write_csv(folder / FUNNEL_TABLE, steps)
        fileio.write_csv(folder / TABLE1_CSV, characteristics)
        fileio.write_text(folder / TABLE1_MD, table1_markdown(characteristics))
        fileio.write_json(folder / INGEST_JSON, record)
    return summary
