"""Read the OAI clinical files: find them anywhere, parse coded values, keep missing-value reasons.

OAI text files are pipe-delimited, sometimes latin-1 with CRLF line endings; values are plain
numbers or codes like ``"1: Yes"``; missing values are blank or a dot code like
``".A: Not Expected"``. Every missing value becomes NaN and its reason is kept beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kneepain.ingest import IngestError

ALL_CLINICAL = "allclinical00"
ENROLLEES = "enrollees"
KL_READINGS = "kxr_sq_bu00"
READING_PROJECT_PREFERENCE = (15, 37, 42)
_CODED = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(.*)$")
_NUMBER = re.compile(r"^\s*-?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$")
BLANK_REASON = "blank"


@dataclass
class ClinicalVariables:
    """Per-participant clinical values (index: subject id) and why any is missing."""

    values: pd.DataFrame  # float columns: pain_right, pain_left, womac_right, womac_left, age, bmi, ...
    sex: pd.Series  # "female" / "male" / NaN
    missing: pd.DataFrame  # same index and columns as values (+ "sex"): reason text or ""
    in_all_clinical: set[str] = field(default_factory=set)
    in_enrollees: set[str] = field(default_factory=set)
    duplicated: dict[str, str] = field(default_factory=dict)  # subject -> "duplicated rows in FILE"
    files: dict[str, Path] = field(default_factory=dict)


def find_clinical_file(root: Path, stem: str) -> Path:
    """The one file named ``stem`` (any case, .txt or .sas7bdat) anywhere under ``root``.

    The ASCII form wins over SAS when both exist. Raises IngestError naming what was searched.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"{root}: clinical root is not a folder")
    matches = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.stem.lower() == stem.lower() and p.suffix.lower() in (".txt", ".sas7bdat")
    ]
    text = sorted(p for p in matches if p.suffix.lower() == ".txt")
    chosen = text or sorted(matches)
    if not chosen:
        raise IngestError(f"{root}: no clinical file {stem}.txt (or .sas7bdat) found at any depth")
    if len(chosen) > 1:
        raise IngestError(f"{root}: several files named {stem}: {[str(p) for p in chosen]}; keep one")
    return chosen[0]


def read_clinical_table(path: Path) -> pd.DataFrame:
    """All cells of a clinical file as stripped strings, column names upper-case.

    Pipe-delimited text is decoded as UTF-8, falling back to latin-1; CRLF is handled. SAS files
    are read with pandas.
    """
    path = Path(path)
    if path.suffix.lower() == ".sas7bdat":
        table = pd.read_sas(path, format="sas7bdat", encoding="latin-1")
        table = table.astype(object).where(table.notna(), "")
        table = table.map(_sas_cell)
    else:
        raw = path.read_bytes()
        encoding = _unsupported_encoding(raw)
        if encoding:
            raise IngestError(
                f"{path}: the file is encoded as {encoding}; save it as UTF-8 (or Latin-1) pipe-delimited "
                "text and run ingest again"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        import io

        try:
            table = pd.read_csv(io.StringIO(text), sep="|", dtype=str, keep_default_na=False, na_filter=False)
        except (ValueError, pd.errors.ParserError) as error:
            raise IngestError(f"{path}: cannot read as a pipe-delimited table ({error})") from error
        table = table.map(str.strip)
    table.columns = [str(c).strip().upper() for c in table.columns]
    return table


def _unsupported_encoding(raw: bytes) -> str | None:
    """'UTF-16' / 'UTF-32' (with the byte order) when the text is in such an encoding, else None.

    Read as Latin-1, such a file would give one garbled column and a misleading "missing
    column" message; its byte-order mark or NUL bytes between letters give it away.
    """
    marks = {
        b"\xff\xfe\x00\x00": "UTF-32 (little-endian)",
        b"\x00\x00\xfe\xff": "UTF-32 (big-endian)",
        b"\xff\xfe": "UTF-16 (little-endian)",
        b"\xfe\xff": "UTF-16 (big-endian)",
    }
    for mark, name in marks.items():
        if raw.startswith(mark):
            return name
    head = raw[:4096]
    if head and head.count(0) > len(head) // 4:  # text with a NUL byte beside most letters
        return "UTF-16 (no byte-order mark)" if head.count(0) < 2 * len(head) // 3 else "UTF-32"
    return None


def _sas_cell(value: object) -> str:
    """SAS numbers come back as floats; write whole numbers without '.0' so ids stay ids."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def require_columns(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Stop with a message naming the file and every missing column."""
    missing = [c for c in columns if c.upper() not in table.columns]
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing} (has {len(table.columns)} columns)")


def parse_coded(cells: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Numbers from OAI cells: ``"1: Yes"`` -> 1, ``"6.25"`` -> 6.25.

    Returns (values as float with NaN for missing, reasons: the missing code text, ``blank``,
    or ``unparseable value '...'``; empty where a value was read).
    """
    values = np.full(len(cells), np.nan)
    reasons = [""] * len(cells)
    for i, cell in enumerate(cells.astype(str)):
        cell = cell.strip()
        if cell in ("", "nan"):
            reasons[i] = BLANK_REASON
        elif cell.startswith("."):
            if _NUMBER.match(cell):  # ".5" is a number, not a missing code
                values[i] = float(cell)
            else:
                reasons[i] = cell
        elif (coded := _CODED.match(cell)) is not None:
            values[i] = float(coded.group(1))
        elif _NUMBER.match(cell):
            values[i] = float(cell)
        else:
            reasons[i] = f"unparseable value {cell!r}"
    return pd.Series(values, index=cells.index), pd.Series(reasons, index=cells.index, dtype=object)


def _ids(table: pd.DataFrame, path: Path) -> pd.Series:
    ids = table["ID"].astype(str).str.strip()
    blank = ids == ""
    if blank.any():
        raise IngestError(
            f"{path}: {int(blank.sum())} row(s) with an empty ID (first at line {int(blank.idxmax()) + 2})"
        )
    return ids


def read_clinical(
    clinical_root: Path,
    *,
    pain_right: str = "P01KPNREV",
    pain_left: str = "P01KPNLEV",
    womac_right: str = "V00WOMKPR",
    womac_left: str = "V00WOMKPL",
    age: str = "V00AGE",
    bmi: str = "P01BMI",
    sex: str = "P02SEX",
) -> ClinicalVariables:
    """Find and read AllClinical00 and Enrollees; variables per participant with missing reasons.

    A needed column that is absent stops the run (IngestError naming file and column). A
    participant listed twice in a file is recorded in ``duplicated`` and excluded later.
    """
    all_path = find_clinical_file(clinical_root, ALL_CLINICAL)
    enr_path = find_clinical_file(clinical_root, ENROLLEES)
    all_table = read_clinical_table(all_path)
    enr_table = read_clinical_table(enr_path)
    mapping = {
        "pain_right": pain_right,
        "pain_left": pain_left,
        "womac_right": womac_right,
        "womac_left": womac_left,
        "age": age,
        "bmi": bmi,
    }
    require_columns(all_table, ["ID", *mapping.values()], all_path)
    require_columns(enr_table, ["ID", sex], enr_path)

    duplicated: dict[str, str] = {}
    frames = {}
    for table, path in ((all_table, all_path), (enr_table, enr_path)):
        table = table.assign(ID=_ids(table, path))
        for subject in table.loc[table["ID"].duplicated(), "ID"]:
            duplicated.setdefault(subject, f"duplicated rows for subject {subject} in {path}")
        frames[path] = table.drop_duplicates("ID").set_index("ID")
    all_rows, enr_rows = frames[all_path], frames[enr_path]
    subjects = sorted(set(all_rows.index) | set(enr_rows.index))

    values = pd.DataFrame(index=pd.Index(subjects, name="subject_id"))
    missing = pd.DataFrame(index=values.index)
    for name, column in mapping.items():
        parsed, reasons = parse_coded(all_rows[column.upper()])
        values[name] = parsed.reindex(subjects)
        missing[name] = reasons.reindex(subjects).fillna(f"not in {all_path.name}")
    _bmi_from_weight_and_height(all_rows, values, missing)
    sex_code, sex_reason = parse_coded(enr_rows[sex.upper()])
    sex_text = sex_code.map({1.0: "male", 2.0: "female"})
    bad_sex = sex_code.notna() & sex_text.isna()
    sex_reason[bad_sex] = "unknown sex code " + sex_code[bad_sex].astype(str)
    missing["sex"] = sex_reason.reindex(subjects).fillna(f"not in {enr_path.name}")
    return ClinicalVariables(
        values=values,
        sex=sex_text.reindex(subjects),
        missing=missing,
        in_all_clinical=set(all_rows.index),
        in_enrollees=set(enr_rows.index),
        duplicated=duplicated,
        files={"all_clinical": all_path, "enrollees": enr_path},
    )


def _bmi_from_weight_and_height(rows: pd.DataFrame, values: pd.DataFrame, missing: pd.DataFrame) -> None:
    """Fill a missing BMI from P01WEIGHT (kg) and P01HEIGHT (mm) when both are there; note it."""
    if not {"P01WEIGHT", "P01HEIGHT"} <= set(rows.columns):
        return
    weight, _ = parse_coded(rows["P01WEIGHT"])
    height, _ = parse_coded(rows["P01HEIGHT"])
    computed = (weight / (height / 1000.0) ** 2).reindex(values.index)
    fill = values["bmi"].isna() & computed.notna() & (computed > 0)
    values.loc[fill, "bmi"] = computed[fill]
    missing.loc[fill, "bmi"] = missing.loc[fill, "bmi"] + " (BMI computed from P01WEIGHT and P01HEIGHT)"


def read_kl_grades(
    clinical_root: Path, preference: tuple[int, ...] = READING_PROJECT_PREFERENCE
) -> tuple[pd.DataFrame, Path]:
    """KL grade per knee (columns kl_right, kl_left; index subject id) from kxr_sq_bu00.

    Several reading projects may grade a knee; the first project in ``preference`` that has a
    grade wins, then any other project in ascending number. Missing when no project graded it.
    """
    path = find_clinical_file(clinical_root, KL_READINGS)
    table = read_clinical_table(path)
    require_columns(table, ["ID", "SIDE", "READPRJ", "V00XRKL"], path)
    ids = _ids(table, path)
    side, _ = parse_coded(table["SIDE"])
    project, _ = parse_coded(table["READPRJ"])
    grade, _ = parse_coded(table["V00XRKL"])
    rank = {p: i for i, p in enumerate(preference)}
    readings = pd.DataFrame(
        {
            "subject_id": ids,
            "side": side.map({1.0: "kl_right", 2.0: "kl_left"}),
            "rank": [rank.get(p, len(preference) + (p if np.isfinite(p) else 1e9)) for p in project],
            "grade": grade,
        }
    )
    readings = readings.dropna(subset=["side", "grade"]).sort_values(["subject_id", "side", "rank"])
    best = readings.drop_duplicates(["subject_id", "side"])
    grades = best.pivot(index="subject_id", columns="side", values="grade")
    grades = grades.reindex(columns=["kl_right", "kl_left"])
    grades.index.name = "subject_id"
    grades.columns.name = None
    return grades, path
