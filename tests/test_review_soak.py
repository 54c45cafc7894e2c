"""Soak: 20 reviewers label 150 cases at once against a real server on 127.0.0.1, then it is killed.

Every acknowledged save must be in the database afterwards (the current record is each reviewer's
last acknowledged version, the history holds every one of them), and the export of 20 x 150 labels
must take under 5 s. Bounded: one pass over the cases (a tenth revised once), and a deadline after
which the reviewers stop by themselves.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from kneepain.review.export import export_reviews
from kneepain.review.store import CATEGORIES
from review_fixtures import free_port, make_review_run, make_study, start_server

REVIEWERS = 20
CASES = 150
DEADLINE_S = 60.0


def test_twenty_reviewers_by_150_cases_lose_no_acknowledged_write(tmp_path: Path) -> None:
    cases = [f"92{i:05d}" for i in range(CASES)]
    run = make_review_run(tmp_path, subjects=cases, size=16)
    db = tmp_path / "soak.sqlite"
    names = tuple(f"reader{i:02d}" for i in range(REVIEWERS))
    tokens = make_study(run, db, reviewers=names)
    port = free_port()
    server = start_server(run, db, port)
    acknowledged: dict[tuple[str, str], list[tuple[int, tuple[str, ...], str]]] = {}
    failures: list[str] = []
    stop_at = time.monotonic() + DEADLINE_S
    start = threading.Barrier(REVIEWERS)

    def review(number: int, name: str) -> None:
        rng = np.random.default_rng(number)
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"X-Review-Token": tokens[name]}, timeout=30
        ) as client:
            start.wait()
            for case_id in rng.permutation(cases):
                saves = 2 if rng.uniform() < 0.1 else 1
                for version in range(saves):
                    if time.monotonic() > stop_at:
                        return
                    lesions = [c for c in CATEGORIES[:-1] if rng.uniform() < 0.3] or ["none"]
                    note = f"{name} {case_id} v{version + 1}"
                    body = {"lesions": lesions, "note": note, "version": version}
                    response = client.post(f"/api/cases/{case_id}/review", json=body)
                    if response.status_code != 200:
                        failures.append(f"{name} {case_id}: {response.status_code} {response.text[:100]}")
                        break
                    stored = response.json()
                    acknowledged.setdefault((case_id, name), []).append(
                        (stored["version"], tuple(stored["lesions"]), stored["note"])
                    )

    began = time.perf_counter()
    threads = [threading.Thread(target=review, args=(i, name)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    server.send_signal(signal.SIGKILL)  # nothing acknowledged may depend on a clean shutdown
    server.wait(timeout=10)

    writes = sum(len(v) for v in acknowledged.values())
    with sqlite3.connect(db) as connection:
        flags = ", ".join(CATEGORIES)
        history = {
            (row[0], row[1], row[2]): (
                tuple(c for c, f in zip(CATEGORIES, row[3:-1], strict=True) if f),
                row[-1],
            )
            for row in connection.execute(
                f"SELECT case_id, reviewer, version, {flags}, note FROM review_history"
            )
        }
        current = {
            (row[0], row[1]): row[2]
            for row in connection.execute("SELECT case_id, reviewer, version FROM reviews")
        }
    lost = [
        (key, version)
        for key, saves in acknowledged.items()
        for version, lesions, note in saves
        if history.get((*key, version)) != (lesions, note)
    ]
    stale = [key for key, saves in acknowledged.items() if current.get(key) != saves[-1][0]]

    began_export = time.perf_counter()
    written = export_reviews(run, db, tmp_path / "export")
    export_s = time.perf_counter() - began_export
    blinding = pd.read_csv(written[3])
    print(
        f"soak: {REVIEWERS} reviewers x {CASES} cases, {writes} acknowledged writes in {seconds:.1f} s "
        f"({writes / seconds:.0f}/s), {len(failures)} refused, {len(lost)} lost, {len(stale)} not current; "
        f"export {export_s:.2f} s"
    )
    assert not failures, failures[:5]
    assert not lost and not stale
    assert len(acknowledged) == REVIEWERS * CASES, "the deadline stopped the reviewers before one pass"
    assert export_s < 5.0
    assert blinding["committed_blind"].tolist() == [CASES] * REVIEWERS
