"""The review database: one SQLite file per run, one row per (case, reviewer), every save kept in history.

Why this shape:
- Each save is one ``BEGIN IMMEDIATE`` transaction committed before the request returns, in WAL
  mode with ``synchronous=FULL``: a closed tab or a killed server loses nothing saved.
- Reviewers never overwrite each other: the current record is keyed by (case, reviewer). Within
  one reviewer, a save carries the version it was based on; a stale version (the same reviewer
  saving from two tabs) is refused with ``StaleReviewError`` instead of silently replacing newer
  work, and the history table keeps every accepted save.
- The run id is stored at creation and checked at every open: a database from another run is an error.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

CATEGORIES = (
    "effusion_synovitis",
    "bone_marrow_lesion",
    "hoffa_synovitis",
    "cartilage_loss",
    "meniscal_damage",
    "other",
    "none",
)
CATEGORY_LABELS = {
    "effusion_synovitis": "Effusion-synovitis",
    "bone_marrow_lesion": "Bone marrow lesion",
    "hoffa_synovitis": "Hoffa-synovitis",
    "cartilage_loss": "Cartilage loss",
    "meniscal_damage": "Meniscal damage",
    "other": "Other",
    "none": "None",
}
REVIEWER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$")
NOTE_MAX = 4000
SCHEMA_VERSION = "1"

_FLAGS = ", ".join(f"{name} INTEGER NOT NULL CHECK ({name} IN (0, 1))" for name in CATEGORIES)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reviews (
    case_id TEXT NOT NULL, reviewer TEXT NOT NULL, {_FLAGS}, note TEXT NOT NULL,
    version INTEGER NOT NULL, saved_at TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (case_id, reviewer)
);
CREATE TABLE IF NOT EXISTS review_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, case_id TEXT NOT NULL, reviewer TEXT NOT NULL, {_FLAGS},
    note TEXT NOT NULL, version INTEGER NOT NULL, saved_at TEXT NOT NULL, run_id TEXT NOT NULL
);
"""


class ReviewStoreError(ValueError):
    """The database file is not a review database, or belongs to another run; the message says which."""


class StaleReviewError(RuntimeError):
    """A save was based on an older version of this reviewer's record than the one stored."""


class InvalidReviewError(ValueError):
    """A review's content is malformed (unknown category, bad reviewer name, note too long)."""


@dataclass(frozen=True)
class Review:
    """One reviewer's current record of one case."""

    case_id: str
    reviewer: str
    lesions: tuple[str, ...]
    note: str
    version: int
    saved_at: str


def check_review(reviewer: str, lesions: list[str] | tuple[str, ...], note: str) -> tuple[str, ...]:
    """Validate a review's content; return the lesions in canonical order. Raises InvalidReviewError."""
    if not REVIEWER_PATTERN.match(reviewer or ""):
        raise InvalidReviewError(
            f"reviewer {reviewer!r}: expected 1-64 letters, digits, spaces or . _ @ - "
            "(starting with a letter or digit)"
        )
    unknown = sorted(set(lesions) - set(CATEGORIES))
    if unknown:
        raise InvalidReviewError(
            f"unknown lesion categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"expected some of {list(CATEGORIES)}"
        )
    if "none" in lesions and len(set(lesions)) > 1:
        raise InvalidReviewError("'none' cannot be recorded together with a lesion")
    if len(note) > NOTE_MAX:
        raise InvalidReviewError(f"note has {len(note)} characters; at most {NOTE_MAX}")
    return tuple(c for c in CATEGORIES if c in lesions)


class ReviewStore:
    """A run's review database on disk. Opens a short-lived connection per operation (thread-safe)."""

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._create_or_check()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=15.0, isolation_level=None)
        try:
            connection.execute("PRAGMA busy_timeout = 15000")
            connection.execute("PRAGMA synchronous = FULL")
            yield connection
        finally:
            connection.close()

    def _create_or_check(self) -> None:
        existed = self.path.exists() and self.path.stat().st_size > 0
        if not existed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                if existed:
                    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if "meta" not in tables:
                        raise ReviewStoreError(f"{self.path}: not a kneepain review database (no meta table)")
                else:
                    db.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
                    db.executescript(SCHEMA)
                    db.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('run_id', ?), ('schema_version', ?)",
                        (self.run_id, SCHEMA_VERSION),
                    )
                stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as error:
            raise ReviewStoreError(f"{self.path}: not a usable SQLite review database ({error})") from error
        if stored.get("run_id") != self.run_id:
            raise ReviewStoreError(
                f"{self.path}: this review database belongs to run {stored.get('run_id')!r}, "
                f"not to run {self.run_id!r}; use another --db for this run"
            )

    def save(
        self, case_id: str, reviewer: str, lesions: list[str] | tuple[str, ...], note: str, based_on: int
    ) -> Review:
        """Commit one reviewer's record of one case in one transaction; returns the stored record.

        ``based_on`` is the version the reviewer's page loaded (0 for a first save); when the stored
        version differs, nothing is written and StaleReviewError is raised.
        """
        ordered = check_review(reviewer, lesions, note)
        saved_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # take the write lock before reading the version
            try:
                row = db.execute(
                    "SELECT version FROM reviews WHERE case_id = ? AND reviewer = ?", (case_id, reviewer)
                ).fetchone()
                current = row[0] if row else 0
                if current != based_on:
                    raise StaleReviewError(
                        f"case {case_id}, reviewer {reviewer}: saved version is {current}, this save was "
                        f"based on version {based_on}; reload the case to see the newer record"
                    )
                version = current + 1
                flags = [int(c in ordered) for c in CATEGORIES]
                values = (case_id, reviewer, *flags, note, version, saved_at, self.run_id)
                marks = ", ".join("?" for _ in values)
                columns = f"case_id, reviewer, {', '.join(CATEGORIES)}, note, version, saved_at, run_id"
                db.execute(f"INSERT OR REPLACE INTO reviews ({columns}) VALUES ({marks})", values)
                db.execute(f"INSERT INTO review_history ({columns}) VALUES ({marks})", values)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return Review(case_id, reviewer, ordered, note, version, saved_at)

    def get(self, case_id: str, reviewer: str) -> Review | None:
        """One reviewer's current record of a case, or None."""
        with self._connect() as db:
            row = db.execute(
                f"SELECT {', '.join(CATEGORIES)}, note, version, saved_at FROM reviews "
                "WHERE case_id = ? AND reviewer = ?",
                (case_id, reviewer),
            ).fetchone()
        if row is None:
            return None
        flags = row[: len(CATEGORIES)]
        lesions = tuple(c for c, flag in zip(CATEGORIES, flags, strict=True) if flag)
        note, version, saved_at = row[len(CATEGORIES) :]
        return Review(case_id, reviewer, lesions, note, version, saved_at)

    def reviewers_by_case(self) -> dict[str, list[str]]:
        """For each reviewed case, who has a record of it."""
        with self._connect() as db:
            rows = db.execute("SELECT case_id, reviewer FROM reviews ORDER BY case_id, reviewer").fetchall()
        result: dict[str, list[str]] = {}
        for case_id, reviewer in rows:
            result.setdefault(case_id, []).append(reviewer)
        return result

    def table(self) -> pd.DataFrame:
        """All current records: case_id, reviewer, one 0/1 column per category, note, version, saved_at."""
        with self._connect() as db:
            return pd.read_sql_query(
                f"SELECT case_id, reviewer, {', '.join(CATEGORIES)}, note, version, saved_at FROM reviews "
                "ORDER BY case_id, reviewer",
                db,
            )
