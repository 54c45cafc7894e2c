"""`kneepain review export`: the Figure 3I table per reviewer and Cohen's kappa between reviewers."""

from __future__ import annotations

import math
import re
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kneepain.cam.compute import run_identity
from kneepain.cli import app
from kneepain.review.export import (
    blind_labels,
    blinding_summary,
    export_reviews,
    lesion_tables,
    pairwise_kappa,
)
from kneepain.review.store import CATEGORIES, CATEGORY_LABELS, Protocol, ReviewStore
from review_fixtures import make_review_run, make_study

# cases 9100001, 9100002 predicted correctly; 9100003, 9100004 wrong (see test_review_app)
ALICE = {
    "9100001": ["effusion_synovitis", "bone_marrow_lesion"],
    "9100002": ["effusion_synovitis", "bone_marrow_lesion"],
    "9100003": ["effusion_synovitis"],
    "9100004": ["none"],
}
BOB = {
    "9100001": ["effusion_synovitis", "bone_marrow_lesion"],
    "9100002": ["effusion_synovitis"],
    "9100003": ["effusion_synovitis"],
    "9100004": ["none"],
}


def test_export_writes_lesion_tables_and_kappa(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "review.sqlite"
    store = ReviewStore(db, run_identity(run))
    for reviewer, reviews in (("alice", ALICE), ("bob", BOB)):
        for case_id, lesions in reviews.items():
            store.save(case_id, reviewer, lesions, "", 0)
    result = CliRunner().invoke(app, ["review", "export", str(run), "--db", str(db)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(run / "review" / "lesion_table.csv").set_index(["reviewer", "category"])
    assert tuple(table.loc[("alice", "Total"), ["n", "correct", "wrong"]]) == (4, 2, 2)
    assert tuple(table.loc[("alice", "Effusion-synovitis"), ["n", "percent", "correct", "wrong"]]) == (
        3,
        75.0,
        2,
        1,
    )
    assert tuple(table.loc[("alice", "Bone marrow lesion"), ["n", "correct", "wrong"]]) == (2, 2, 0)
    assert tuple(table.loc[("bob", "Bone marrow lesion"), ["n", "correct", "wrong"]]) == (1, 1, 0)
    kappa = pd.read_csv(run / "review" / "agreement.csv").set_index("category")
    # BML: alice 1,1,0,0 vs bob 1,0,0,0 -> po 0.75, pe 0.5, kappa 0.5
    assert kappa.loc["Bone marrow lesion", "kappa"] == pytest.approx(0.5)
    assert kappa.loc["Effusion-synovitis", "kappa"] == pytest.approx(1.0)
    assert math.isnan(kappa.loc["Meniscal damage", "kappa"])  # nobody varies: undefined, not 1
    assert kappa.loc["Meniscal damage", "agreement"] == 1.0
    markdown = (run / "review" / "lesion_table.md").read_text()
    assert "## Reviewer alice" in markdown and "| Bone marrow lesion | 2 | 50.0 | 2 | 0 |" in markdown
    assert "not for clinical use" in markdown


def test_export_refuses_a_database_of_another_run(tmp_path: Path) -> None:
    first = make_review_run(tmp_path, "r1")
    second = make_review_run(tmp_path, "r2")
    ReviewStore(tmp_path / "r1.sqlite", run_identity(first)).save("9100001", "alice", ["other"], "", 0)
    result = CliRunner().invoke(app, ["review", "export", str(second), "--db", str(tmp_path / "r1.sqlite")])
    assert result.exit_code == 2
    assert "belongs to run" in result.output.replace("\n", "")
    assert not (second / "review").exists()


def test_kappa_uses_labels_committed_blind_and_blinding_is_reported(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "review.sqlite"
    store = ReviewStore(db, run_identity(run))
    for reviewer, reviews in (("alice", ALICE), ("bob", BOB)):
        for case_id, lesions in reviews.items():
            store.save(case_id, reviewer, lesions, "", 0)
    # bob sees the prediction of 9100002, then changes his BML answer to alice's: not a blind label
    store.record_reveal("9100002", "bob", "prediction")
    store.save("9100002", "bob", ["effusion_synovitis", "bone_marrow_lesion"], "after reveal", 1)
    result = CliRunner().invoke(app, ["review", "export", str(run), "--db", str(db)])
    assert result.exit_code == 0, result.output
    kappa = pd.read_csv(run / "review" / "agreement.csv").set_index("category")
    assert kappa.loc["Bone marrow lesion", "kappa"] == pytest.approx(0.5)  # the blind answers, not 1.0
    blinding = pd.read_csv(run / "review" / "blinding.csv").set_index("reviewer")
    assert blinding.loc[
        "bob", ["labelled", "committed_blind", "revealed", "edited_after_reveal"]
    ].tolist() == [
        4,
        4,
        1,
        1,
    ]
    assert blinding.loc["alice", "revealed"] == 0 and blinding.loc["alice", "committed_blind"] == 4
    table = pd.read_csv(run / "review" / "lesion_table.csv").set_index(["reviewer", "category"])
    assert table.loc[("bob", "Bone marrow lesion"), "n"] == 2  # the lesion table keeps the final label


def test_pairwise_kappa_matches_sklearn_with_partial_overlap() -> None:
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(5)
    rows = []
    for r in range(5):
        for c in range(40):
            if rng.uniform() < 0.8:
                rows.append(
                    {
                        "case_id": f"c{c:02d}",
                        "reviewer": f"r{r}",
                        **{k: int(rng.uniform() < 0.3) for k in CATEGORIES},
                    }
                )
    labels = pd.DataFrame(rows)
    table = pairwise_kappa(labels)
    assert len(table) == 10 * len(CATEGORIES)
    for row in table.itertuples():
        a = labels[labels["reviewer"] == row.reviewer_a].set_index("case_id")
        b = labels[labels["reviewer"] == row.reviewer_b].set_index("case_id")
        shared = a.index.intersection(b.index)
        key = next(k for k, v in CATEGORY_LABELS.items() if v == row.category)
        expected = cohen_kappa_score(a.loc[shared, key], b.loc[shared, key])
        assert row.cases == len(shared) and row.kappa == pytest.approx(expected)


def test_a_case_with_a_migrated_label_counts_as_unknown_blinding(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "case_id": ["1", "1", "2"],
            "reviewer": "carol",
            "after_reveal": [None, 0, 0],  # case 1: saved before reveals were recorded, then again
            "other": [1, 0, 1],
        }
    )
    blinding = blinding_summary(
        pd.DataFrame({"case_id": ["1", "2"], "reviewer": ["carol", "carol"]}),
        history,
        pd.DataFrame(columns=["case_id", "reviewer", "what", "revealed_at"]),
    ).set_index("reviewer")
    assert blinding.loc["carol", ["labelled", "committed_blind", "unknown_blinding"]].tolist() == [2, 1, 1]
    assert blind_labels(history)["case_id"].tolist() == ["2"]


def test_add_reviewer_prints_the_secret_once_and_the_first_call_creates_the_admin(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "study.sqlite"
    runner = CliRunner()
    first = runner.invoke(app, ["review", "add-reviewer", str(run), "--db", str(db), "alice"])
    assert first.exit_code == 0, first.output
    secrets = dict(re.findall(r"^(admin|reviewer) \S+: secret (\S+)$", first.output, re.M))
    assert set(secrets) == {"admin", "reviewer"}
    store = ReviewStore(db, run_identity(run))
    assert store.authenticate(secrets["reviewer"]).name == "alice"
    assert store.authenticate(secrets["admin"]).is_admin
    again = runner.invoke(app, ["review", "add-reviewer", str(run), "--db", str(db), "alice"])
    assert (
        again.exit_code == 2
        and "already exists" in again.output
        and not re.search(r": secret \S+$", again.output, re.M)
    )
    newline = runner.invoke(app, ["review", "add-reviewer", str(run), "--db", str(db), "alice\n"])
    assert newline.exit_code == 2 and "reviewer 'alice\\n'" in newline.output
    reserved = runner.invoke(app, ["review", "add-reviewer", str(run), "--db", str(db), "Admin"])
    assert reserved.exit_code == 2 and "reserved" in reserved.output
    assert store.reviewer_names() == ["alice"]


def test_init_study_records_the_protocol_and_refuses_to_change_it_mid_study(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "study.sqlite"
    runner = CliRunner()
    created = runner.invoke(
        app, ["review", "init-study", str(run), "--db", str(db), "--prediction", "never", "--blind-pain-side"]
    )
    assert created.exit_code == 0, created.output
    assert "admin admin: secret " in created.output
    store = ReviewStore(db, run_identity(run))
    assert store.protocol() == Protocol("never", "after_label")
    store.save("9100001", "alice", ["other"], "", 0)
    changed = runner.invoke(app, ["review", "init-study", str(run), "--db", str(db)])
    assert changed.exit_code == 2 and "cannot change" in changed.output.replace("\n", "")
    bad = runner.invoke(
        app, ["review", "init-study", str(run), "--db", str(tmp_path / "b.sqlite"), "--prediction", "soon"]
    )
    assert bad.exit_code == 2 and "prediction must be one of" in bad.output.replace("\n", "")


def test_serve_refuses_a_network_address_without_tls(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "x.sqlite"
    make_study(run, db)
    result = CliRunner().invoke(app, ["review", "serve", str(run), "--db", str(db), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--ssl-certfile" in result.output
    half = CliRunner().invoke(app, ["review", "serve", str(run), "--db", str(db), "--ssl-certfile", str(db)])
    assert half.exit_code == 2 and "both" in half.output


def test_serve_refuses_a_missing_database_or_one_without_reviewers(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    missing = CliRunner().invoke(app, ["review", "serve", str(run), "--db", str(tmp_path / "none.sqlite")])
    assert missing.exit_code == 2 and "init-study" in missing.output.replace("\n", "")
    assert not (tmp_path / "none.sqlite").exists()
    ReviewStore(tmp_path / "empty.sqlite", run_identity(run))
    empty = CliRunner().invoke(app, ["review", "serve", str(run), "--db", str(tmp_path / "empty.sqlite")])
    assert empty.exit_code == 2 and "add-reviewer" in empty.output.replace("\n", "")


def test_serve_passes_tls_to_uvicorn_and_insecure_allows_plain_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    run = make_review_run(tmp_path)
    db = tmp_path / "x.sqlite"
    make_study(run, db)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate")
    key.write_text("key")
    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    base = ["review", "serve", str(run), "--db", str(db), "--host", "0.0.0.0"]
    tls = CliRunner().invoke(app, [*base, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)])
    assert tls.exit_code == 0, tls.output
    assert "open https://0.0.0.0:8765/" in tls.output
    insecure = CliRunner().invoke(app, [*base, "--insecure"])
    assert insecure.exit_code == 0, insecure.output
    assert [(c["host"], c["ssl_certfile"], c["ssl_keyfile"]) for c in calls] == [
        ("0.0.0.0", str(cert), str(key)),
        ("0.0.0.0", None, None),
    ]


def test_a_newline_name_kept_from_an_old_database_is_quoted_in_the_export(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "review.sqlite"
    store = ReviewStore(db, run_identity(run))
    store.save("9100001", "alice", ["other"], "", 0)
    with sqlite3.connect(db) as connection:  # as a schema-1 app once let through
        connection.execute("UPDATE reviews SET reviewer = 'alice' || char(10) WHERE reviewer = 'alice'")
    store.save("9100001", "alice", ["none"], "", 0)
    export_reviews(run, db, tmp_path / "out")
    headings = [
        line for line in (tmp_path / "out" / "lesion_table.md").read_text().splitlines() if "Reviewer" in line
    ]
    assert headings == ["## Reviewer alice", "## Reviewer 'alice\\n'"]


def test_export_tables_for_70_reviewers_take_seconds_not_a_minute() -> None:
    import time

    rng = np.random.default_rng(7)
    cases = pd.DataFrame(
        {"subject_id": [f"c{c:03d}" for c in range(107)], "correct": rng.uniform(size=107) < 0.7}
    )
    history = pd.DataFrame(
        [
            {"case_id": c, "reviewer": f"r{r:02d}", **{k: int(rng.uniform() < 0.3) for k in CATEGORIES}}
            for r in range(70)
            for c in cases["subject_id"]
        ]
    )
    history["id"] = range(len(history))
    history["after_reveal"] = 0
    began = time.perf_counter()
    kappas = pairwise_kappa(blind_labels(history))
    blinding = blinding_summary(
        history, history, pd.DataFrame(columns=["case_id", "reviewer", "revealed_at"])
    )
    lesions = lesion_tables(history, cases)
    seconds = time.perf_counter() - began
    assert len(kappas) == 70 * 69 // 2 * len(CATEGORIES) and len(blinding) == 70 and len(lesions) == 70 * 8
    assert seconds < 3.0, f"{seconds:.1f} s (the per-pair export took 56 s for ~70 reviewers)"
