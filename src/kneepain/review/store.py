"""The review database: one SQLite file per run holding the study's accounts, protocol, labels and reveals.

Why this shape:
- Each save is one ``BEGIN IMMEDIATE`` transaction committed before the request returns, in WAL
  mode with ``synchronous=FULL``: a closed tab or a killed server loses nothing saved.
- Reviewers are accounts. A secret is printed once and stored only as a salted scrypt hash; every
  label is written under the authenticated account's name, never a name taken from a request.
- Reviewers never overwrite each other: the current record is keyed by (case, reviewer). Within
  one reviewer, a save carries the version it was based on; a stale version (the same reviewer
  saving from two tabs) is refused with ``StaleReviewError`` instead of silently replacing newer
  work. The history table keeps every accepted save with who wrote it and whether the prediction
  had already been revealed to that reviewer for that case.
- Blinding is the server's: the study protocol lives in ``meta``; a reveal is refused until the
  reviewer's label of the case is saved, and each reveal is recorded with its time.
- The run id is stored at creation and checked at every open: a database from another run is an
  error. A schema-1 database (before accounts) is migrated in place, keeping every label.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

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
# \Z, not $: "$" also matches before a trailing newline, which made "alice\n" a look-alike reviewer
REVIEWER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}\Z")
ADMIN = "admin"  # the study lead's account name; no reviewer may take it
NOTE_MAX = 4000
VERSION_MAX = 1_000_000
SCHEMA_VERSION = "2"
PREDICTION_RULES = ("after_label", "never")
PAIN_SIDE_RULES = ("shown", "after_label")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}

_FLAGS = ", ".join(f"{name} INTEGER NOT NULL CHECK ({name} IN (0, 1))" for name in CATEGORIES)
_SCHEMA_1 = f"""
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
# schema 2 adds accounts, reveals, and who wrote each history row with its blinding state
# (written_by and after_reveal are NULL on rows migrated from schema 1: not recorded then)
_SCHEMA_2 = """
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY, role TEXT NOT NULL CHECK (role IN ('reviewer', 'admin')),
    key_id TEXT NOT NULL UNIQUE, salt BLOB NOT NULL, secret_hash BLOB NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reveals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, case_id TEXT NOT NULL, reviewer TEXT NOT NULL,
    what TEXT NOT NULL, revealed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reveals_by_case ON reveals (case_id, reviewer);
CREATE INDEX IF NOT EXISTS history_by_case ON review_history (case_id, reviewer);
"""


class ReviewStoreError(ValueError):
    """The database file is not a review database, or belongs to another run; the message says which."""


class StaleReviewError(RuntimeError):
    """A save was based on an older version of this reviewer's record than the one stored."""


class InvalidReviewError(ValueError):
    """A review's content is malformed (unknown category, bad reviewer name, note too long)."""


class NotYetLabelledError(RuntimeError):
    """A reveal was asked for before the reviewer's label of the case was saved."""


@dataclass(frozen=True)
class Review:
    """One reviewer's current record of one case."""

    case_id: str
    reviewer: str
    lesions: tuple[str, ...]
    note: str
    version: int
    saved_at: str


@dataclass(frozen=True)
class Account:
    """An authenticated account: a reviewer, or the study's admin."""

    name: str
    role: Literal["reviewer", "admin"]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class Protocol:
    """The study's blinding rules: when a reviewer may see the prediction and the pain side of a case.

    ``prediction``: ``after_label`` (once the reviewer's label of the case is saved) or ``never``.
    ``pain_side``: ``shown`` (the case page names the painful knee) or ``after_label``.
    """

    prediction: str = "after_label"
    pain_side: str = "shown"


def now() -> str:
    """UTC time with milliseconds, the stamp on every save and reveal."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def check_reviewer_name(name: str) -> str:
    """The name itself when it is a valid reviewer name, else InvalidReviewError."""
    if not isinstance(name, str) or not REVIEWER_PATTERN.match(name):
        raise InvalidReviewError(
            f"reviewer {name!r}: expected 1-64 letters, digits, spaces or . _ @ - "
            "(starting with a letter or digit, nothing after the last one)"
        )
    return name


def check_review(reviewer: str, lesions: list[str] | tuple[str, ...], note: str) -> tuple[str, ...]:
    """Validate a review's content; return the lesions in canonical order. Raises InvalidReviewError."""
    check_reviewer_name(reviewer)
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
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidReviewError("note is not valid Unicode text (a lone surrogate)") from error
    return tuple(c for c in CATEGORIES if c in lesions)


def _secret_hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, **_SCRYPT)


class ReviewStore:
    """A run's review database on disk; thread-safe (one connection per thread)."""

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._local = threading.local()
        self._create_or_check()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, opened once and kept: a connection per operation cost more
        than the save itself (schema parsed again, and a WAL checkpoint when the last one closed)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=15.0, isolation_level=None)
            connection.execute("PRAGMA busy_timeout = 15000")
            connection.execute("PRAGMA synchronous = FULL")
            self._local.connection = connection
        yield connection

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the lock before anything is read."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _create_or_check(self) -> None:
        existed = self.path.exists() and self.path.stat().st_size > 0
        if not existed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # secrets' hashes and the labels live here: readable by the study lead only
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            with self._connect() as db:
                if existed:
                    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if "meta" not in tables:
                        raise ReviewStoreError(f"{self.path}: not a kneepain review database (no meta table)")
                else:
                    db.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
                    db.executescript(_SCHEMA_1)
                    db.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('run_id', ?), ('schema_version', ?)",
                        (self.run_id, "1"),  # migrated to the current schema just below
                    )
                stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if stored.get("run_id") != self.run_id:
                    raise ReviewStoreError(
                        f"{self.path}: this review database belongs to run {stored.get('run_id')!r}, "
                        f"not to run {self.run_id!r}; use another --db for this run"
                    )
                version = stored.get("schema_version")
                if version == "1":
                    self._migrate_from_1(db)
                elif version != SCHEMA_VERSION:
                    raise ReviewStoreError(
                        f"{self.path}: review database schema {version!r} is not one this kneepain reads "
                        f"(1 or {SCHEMA_VERSION}); open it with the kneepain version that wrote it"
                    )
        except sqlite3.DatabaseError as error:
            raise ReviewStoreError(f"{self.path}: not a usable SQLite review database ({error})") from error

    def _migrate_from_1(self, db: sqlite3.Connection) -> None:
        """Schema 1 -> 2 in one transaction: add accounts, reveals, history's writer and blinding state."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1":
                columns = {r[1] for r in db.execute("PRAGMA table_info(review_history)")}
                if "written_by" not in columns:
                    db.execute("ALTER TABLE review_history ADD COLUMN written_by TEXT")
                if "after_reveal" not in columns:
                    db.execute("ALTER TABLE review_history ADD COLUMN after_reveal INTEGER")
                for statement in _SCHEMA_2.strip().split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES "
                    "('protocol_prediction', ?), ('protocol_pain_side', ?), ('study_key', ?)",
                    (Protocol().prediction, Protocol().pain_side, secrets.token_hex(16)),
                )
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # accounts and protocol

    def add_account(self, name: str, role: Literal["reviewer", "admin"], replace: bool = False) -> str:
        """Create (or, with ``replace``, re-issue) an account; returns its token, which is stored only hashed.

        The token is ``<key id>.<secret>``: the key id finds the account, the secret proves it.
        """
        if role == "reviewer":
            check_reviewer_name(name)
            if name.casefold() == ADMIN:
                raise InvalidReviewError(f"reviewer name {name!r} is reserved for the study's admin account")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        digest = _secret_hash(secret, salt)
        with self._write() as db:
            row = db.execute("SELECT role FROM accounts WHERE name = ?", (name,)).fetchone()
            if row is not None and not replace:
                raise ReviewStoreError(
                    f"{self.path}: account {name!r} already exists; its secret was printed when it was "
                    "added (give --reset to issue a new one and invalidate the old)"
                )
            if row is not None and row[0] != role:
                raise ReviewStoreError(f"{self.path}: account {name!r} is the {row[0]}, not a {role}")
            db.execute(
                "INSERT OR REPLACE INTO accounts (name, role, key_id, salt, secret_hash, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, role, key_id, salt, digest, now()),
            )
        return f"{key_id}.{secret}"

    def has_admin(self) -> bool:
        with self._connect() as db:
            return db.execute("SELECT 1 FROM accounts WHERE role = 'admin'").fetchone() is not None

    def reviewer_names(self) -> list[str]:
        """The reviewer accounts, sorted."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM accounts WHERE role = 'reviewer' ORDER BY 1")]

    def authenticate(self, token: str) -> Account | None:
        """The token's account, or None (unknown key id, or a wrong secret: compared in constant time)."""
        key_id, _, secret = token.partition(".")
        if not key_id or not secret or len(token) > 200 or not token.isascii():
            return None
        with self._connect() as db:
            row = db.execute(
                "SELECT name, role, salt, secret_hash FROM accounts WHERE key_id = ?", (key_id,)
            ).fetchone()
        if row is None:
            return None
        name, role, salt, digest = row
        if not hmac.compare_digest(_secret_hash(secret, salt), digest):
            return None
        return Account(name, role)

    def protocol(self) -> Protocol:
        with self._connect() as db:
            stored = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'protocol_%'").fetchall())
        return Protocol(stored["protocol_prediction"], stored["protocol_pain_side"])

    def set_protocol(self, protocol: Protocol) -> None:
        """Record the blinding rules; refused once any label exists under other rules."""
        if protocol.prediction not in PREDICTION_RULES or protocol.pain_side not in PAIN_SIDE_RULES:
            raise InvalidReviewError(
                f"protocol {protocol}: prediction must be one of {PREDICTION_RULES}, "
                f"pain side one of {PAIN_SIDE_RULES}"
            )
        with self._write() as db:
            stored = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'protocol_%'").fetchall())
            current = Protocol(stored["protocol_prediction"], stored["protocol_pain_side"])
            labelled = db.execute("SELECT count(*) FROM reviews").fetchone()[0]
            if labelled and current != protocol:
                raise ReviewStoreError(
                    f"{self.path}: {labelled} labels were recorded under protocol {current}; the protocol "
                    "cannot change in the middle of a study (start a new database)"
                )
            db.execute("UPDATE meta SET value = ? WHERE key = 'protocol_prediction'", (protocol.prediction,))
            db.execute("UPDATE meta SET value = ? WHERE key = 'protocol_pain_side'", (protocol.pain_side,))

    def study_key(self) -> bytes:
        """The study's random key (assigns knees A/B when the pain side is blinded)."""
        with self._connect() as db:
            return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'study_key'").fetchone()[0])

    # labels and reveals

    def save(
        self, case_id: str, reviewer: str, lesions: list[str] | tuple[str, ...], note: str, based_on: int
    ) -> Review:
        """Commit one reviewer's record of one case in one transaction; returns the stored record.

        ``reviewer`` is the authenticated account. ``based_on`` is the version the reviewer's page
        loaded (0 for a first save); when the stored version differs, nothing is written and
        StaleReviewError is raised.
        """
        ordered = check_review(reviewer, lesions, note)
        saved_at = now()
        with self._write() as db:
            row = db.execute(
                "SELECT version FROM reviews WHERE case_id = ? AND reviewer = ?", (case_id, reviewer)
            ).fetchone()
            current = row[0] if row else 0
            if current != based_on:
                raise StaleReviewError(
                    f"case {case_id}, reviewer {reviewer}: saved version is {current}, this save was "
                    f"based on version {based_on}; reload the case to see the newer record"
                )
            revealed = db.execute(
                "SELECT 1 FROM reveals WHERE case_id = ? AND reviewer = ? LIMIT 1", (case_id, reviewer)
            ).fetchone()
            version = current + 1
            flags = [int(c in ordered) for c in CATEGORIES]
            values = (case_id, reviewer, *flags, note, version, saved_at, self.run_id)
            columns = f"case_id, reviewer, {', '.join(CATEGORIES)}, note, version, saved_at, run_id"
            marks = ", ".join("?" for _ in values)
            db.execute(f"INSERT OR REPLACE INTO reviews ({columns}) VALUES ({marks})", values)
            db.execute(
                f"INSERT INTO review_history ({columns}, written_by, after_reveal) VALUES ({marks}, ?, ?)",
                (*values, reviewer, int(revealed is not None)),
            )
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

    def record_reveal(self, case_id: str, reviewer: str, what: str) -> str:
        """Record that ``what`` (prediction, pain_side) was shown to a reviewer; returns the time.

        Raises NotYetLabelledError (nothing recorded) when the reviewer has no saved label of the case.
        """
        with self._write() as db:
            labelled = db.execute(
                "SELECT 1 FROM reviews WHERE case_id = ? AND reviewer = ?", (case_id, reviewer)
            ).fetchone()
            if labelled is None:
                raise NotYetLabelledError(
                    f"case {case_id}: save your label of this case before the {what.replace('_', ' ')} "
                    "is shown (blinded study)"
                )
            stamp = now()
            db.execute(
                "INSERT INTO reveals (case_id, reviewer, what, revealed_at) VALUES (?, ?, ?, ?)",
                (case_id, reviewer, what, stamp),
            )
        return stamp

    def reviewer_status(self, reviewer: str) -> dict[str, tuple[int, bool]]:
        """For each case this reviewer labelled: (version, whether anything was revealed to them)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT r.case_id, r.version, EXISTS (SELECT 1 FROM reveals v WHERE v.case_id = r.case_id "
                "AND v.reviewer = r.reviewer) FROM reviews r WHERE r.reviewer = ?",
                (reviewer,),
            ).fetchall()
        return {case_id: (version, bool(revealed)) for case_id, version, revealed in rows}

    def revealed(self, case_id: str, reviewer: str) -> bool:
        with self._connect() as db:
            row = db.execute(
                "SELECT 1 FROM reveals WHERE case_id = ? AND reviewer = ? LIMIT 1", (case_id, reviewer)
            ).fetchone()
        return row is not None

    def reviewers_by_case(self) -> dict[str, list[str]]:
        """For each reviewed case, who has a record of it (the admin's view)."""
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

    def history(self) -> pd.DataFrame:
        """Every accepted save in order, with written_by and after_reveal (NULL: not recorded, schema 1)."""
        with self._connect() as db:
            return pd.read_sql_query(
                f"SELECT id, case_id, reviewer, {', '.join(CATEGORIES)}, version, saved_at, written_by, "
                "after_reveal FROM review_history ORDER BY id",
                db,
            )

    def reveals(self) -> pd.DataFrame:
        """Every reveal: case_id, reviewer, what, revealed_at."""
        with self._connect() as db:
            return pd.read_sql_query(
                "SELECT case_id, reviewer, what, revealed_at FROM reveals ORDER BY id", db
            )
