"""OAI clinical text files: pipe-delimited, OAI variable names, coded values and missing codes."""

from __future__ import annotations

from pathlib import Path

from kneepain.fileio import write_text
from kneepain.synth.population import Person

ALLCLINICAL = Path("AllClinical_ASCII/AllClinical00.txt")
ENROLLEES = Path("General_ASCII/Enrollees.txt")
KXR_SQ = Path("X-Ray Image Assessments_ASCII/Semi-Quant Scoring_ASCII/kxr_sq_bu00.txt")
SIDE_CODE = {"right": "1: Right", "left": "2: Left"}


def _yes_no(value: bool) -> str:
    return "1: Yes" if value else "0: No"


def _number(value: float) -> str:
    """Plain number as OAI writes it: integers without a decimal point."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _cell(person: Person, column: str, value: str) -> str:
    return person.missing_cells.get(column, value)


def allclinical_rows(people: list[Person]) -> list[list[str]]:
    """Rows of AllClinical00.txt (header first)."""
    header = [
        "ID",
        "V00AGE",
        "P01BMI",
        "P01WEIGHT",
        "P01HEIGHT",
        "P01KPNREV",
        "P01KPNLEV",
        "V00WOMKPR",
        "V00WOMKPL",
    ]
    rows = [header]
    for p in people:
        values = {
            "ID": p.subject_id,
            "V00AGE": str(p.age),
            "P01BMI": f"{p.bmi:.1f}",
            "P01WEIGHT": f"{p.weight_kg:.1f}",
            "P01HEIGHT": f"{p.height_mm:.0f}",
            "P01KPNREV": _yes_no(p.knees["right"].painful),
            "P01KPNLEV": _yes_no(p.knees["left"].painful),
            "V00WOMKPR": _number(p.knees["right"].womac),
            "V00WOMKPL": _number(p.knees["left"].womac),
        }
        rows.append([_cell(p, column, values[column]) for column in header])
    return rows


def enrollees_rows(people: list[Person]) -> list[list[str]]:
    """Rows of Enrollees.txt (header first)."""
    rows = [["ID", "P02SEX", "P02RACE", "V00COHORT"]]
    for p in people:
        sex = "1: Male" if p.sex == 1 else "2: Female"
        cohort = "1: Progression" if p.cohort_folder == "0.C.2" else "2: Incidence"
        rows.append([p.subject_id, sex, "1: White or Caucasian", cohort])
    return rows


def kxr_rows(people: list[Person]) -> list[list[str]]:
    """Rows of kxr_sq_bu00.txt: one per knee and reading project; some knees read twice (15 and 37)."""
    rows = [["ID", "SIDE", "READPRJ", "V00XRKL"]]
    for p in people:
        for side in ("right", "left"):
            kl = _cell(p, f"V00XRKL_{side}", f"{p.knees[side].kl}: {p.knees[side].kl}")
            rows.append([p.subject_id, SIDE_CODE[side], "15", kl])
            if int(p.subject_id) % 7 == 0 and not kl.startswith("."):
                # A second project's reading that disagrees by up to one grade; readers prefer 15.
                other = min(4, p.knees[side].kl + (int(p.subject_id) % 2))
                rows.append([p.subject_id, "1" if side == "right" else "2", "37", str(other)])
    return rows


def write_clinical(folder: Path, people: list[Person]) -> None:
    """Write the three clinical files under ``folder`` (AllClinical00 with CRLF endings, like OAI's)."""
    tables = ((ALLCLINICAL, allclinical_rows(people), "\r\n"), (ENROLLEES, enrollees_rows(people), "\n"))
    for relative, rows, newline in (*tables, (KXR_SQ, kxr_rows(people), "\n")):
        write_text(folder / relative, "".join("|".join(row) + newline for row in rows))
