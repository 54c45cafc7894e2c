"""The review app through HTTP: accounts, server-side blinding, saves in SQLite, limits, bad input.

Every request carries a reviewer's or the admin's token; the study database is real SQLite and
the run folder real files (see review_fixtures).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from kneepain.cam.compute import CamInputError, run_identity
from kneepain.review.app import create_app
from kneepain.review.store import (
    SCHEMA_VERSION,
    InvalidReviewError,
    Protocol,
    ReviewStore,
    ReviewStoreError,
    check_reviewer_name,
)
from review_fixtures import SUBJECTS, make_review_run, make_study

SECURITY = {"content-security-policy", "x-content-type-options"}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("study")
    run = make_review_run(root)
    return run, root / "review.sqlite", make_study(run, root / "review.sqlite")


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A study of its own (for tests that depend on what is, or is not, saved)."""
    run = make_review_run(tmp_path)
    return run, tmp_path / "review.sqlite", make_study(run, tmp_path / "review.sqlite")


def clients(study: tuple[Path, Path, dict[str, str]]) -> dict[str, TestClient]:
    """One client per account, each sending its own token."""
    run, db, tokens = study
    app = create_app(run, db)
    return {
        name: TestClient(app, headers={"X-Review-Token": token}, raise_server_exceptions=False)
        for name, token in tokens.items()
    }


def post(client: TestClient, case_id: str, **review: object) -> object:
    body = {"lesions": [], "note": "", "version": 0, **review}
    return client.post(f"/api/cases/{case_id}/review", json=body)


def test_prediction_is_released_only_after_the_reviewers_label_is_saved(fresh: tuple) -> None:
    _, db, _ = fresh
    who = clients(fresh)
    alice, bob = who["alice"], who["bob"]
    page = alice.get("/cases/9100003")
    info = alice.get("/api/cases/9100003").json()
    for text in (page.text, json.dumps(info)):
        assert "0.3" not in text and "prob" not in text and "predicted" not in text
    assert info["knees"][0] == {"key": "right", "caption": "Painful knee (right)"}
    before = alice.get("/api/cases/9100003/prediction")
    assert before.status_code == 409 and "save your label" in before.json()["detail"]
    assert post(alice, "9100003", lesions=["other"]).status_code == 200
    revealed = alice.get("/api/cases/9100003/prediction").json()
    assert {k: revealed[k] for k in ("prob_right", "predicted_side", "correct")} == {
        "prob_right": 0.3,
        "predicted_side": "left",
        "correct": False,
    }
    assert bob.get("/api/cases/9100003/prediction").status_code == 409  # alice's label is not bob's
    assert post(alice, "9100003", lesions=["none"], version=1).status_code == 200  # edited after reveal
    with sqlite3.connect(db) as connection:
        reveals = connection.execute("SELECT case_id, reviewer, what, revealed_at FROM reveals").fetchall()
        history = connection.execute(
            "SELECT version, written_by, after_reveal FROM review_history ORDER BY id"
        ).fetchall()
    assert [r[:3] for r in reveals] == [("9100003", "alice", "prediction")] and reveals[0][3] == revealed[
        "revealed_at"
    ]
    assert history == [(1, "alice", 0), (2, "alice", 1)]


def test_a_study_that_never_shows_the_prediction_refuses_it(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    tokens = make_study(run, tmp_path / "n.sqlite", protocol=Protocol("never", "shown"))
    alice = TestClient(create_app(run, tmp_path / "n.sqlite"), headers={"X-Review-Token": tokens["alice"]})
    assert post(alice, "9100001", lesions=["other"]).status_code == 200
    assert alice.get("/api/cases/9100001/prediction").status_code == 403


def test_blinded_pain_side_shows_knees_a_and_b_until_the_label_is_saved(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    tokens = make_study(run, tmp_path / "s.sqlite", protocol=Protocol("after_label", "after_label"))
    alice = TestClient(
        create_app(run, tmp_path / "s.sqlite"),
        headers={"X-Review-Token": tokens["alice"]},
        raise_server_exceptions=False,
    )
    info = alice.get("/api/cases/9100001").json()
    page = alice.get("/cases/9100001").text
    assert [k["key"] for k in info["knees"]] == ["a", "b"] and "painful" not in json.dumps(info).lower()
    assert "Painful knee" not in page
    for path in ("/cases/9100001/slices/left/9/mri.png", "/cases/9100001/overlay/right.png"):
        assert alice.get(path).status_code == 403
    assert alice.get("/cases/9100001/slices/a/9/mri.png").status_code == 200
    assert post(alice, "9100001", lesions=["other"]).status_code == 200
    released = alice.get("/api/cases/9100001/prediction").json()
    assert released["painful_side"] == "right" and released["knee_a"] in ("left", "right")
    same = alice.get(f"/cases/9100001/slices/{released['knee_a']}/9/mri.png")
    assert same.status_code == 200 and same.content == alice.get("/cases/9100001/slices/a/9/mri.png").content


def test_each_reviewer_sees_and_edits_only_their_own_labels(fresh: tuple) -> None:
    _, db, _ = fresh
    who = clients(fresh)
    alice, bob, admin = who["alice"], who["bob"], who["admin"]
    assert post(alice, "9100002", lesions=["cartilage_loss"], note="alice's note").status_code == 200
    # bob cannot write under alice's name, nor read her record by naming her
    forged = post(bob, "9100002", reviewer="alice", lesions=["none"], version=1)
    assert forged.status_code == 403
    assert bob.get("/api/cases/9100002/review", params={"reviewer": "alice"}).json()["version"] == 0
    for text in (bob.get("/").text, bob.get("/api/cases").text, bob.get("/cases/9100002").text):
        assert "alice" not in text
    assert post(bob, "9100002", lesions=["none"]).json()["version"] == 1  # his own, version 1
    assert alice.get("/api/cases/9100002/review").json()["lesions"] == ["cartilage_loss"]
    assert admin.get("/api/cases").json()[1] == {"case_id": "9100002", "reviewers": ["alice", "bob"]}
    assert "alice, bob" in admin.get("/").text
    assert {r["reviewer"] for r in admin.get("/api/admin/reviews").json()} == {"alice", "bob"}
    blinding = admin.get("/api/admin/export").json()["blinding"]
    assert [(r["reviewer"], r["committed_blind"]) for r in blinding] == [("alice", 1), ("bob", 1)]
    assert bob.get("/api/admin/export").status_code == 403
    assert post(admin, "9100001", lesions=["other"]).status_code == 403  # the admin labels nothing
    assert bob.get("/api/admin/reviews").status_code == 403
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT reviewer, written_by, cartilage_loss, none FROM review_history ORDER BY id"
        ).fetchall()
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    assert rows == [("alice", "alice", 1, 0), ("bob", "bob", 0, 1)] and mode == "wal"


def test_secrets_are_stored_hashed_and_checked(fresh: tuple) -> None:
    run, db, tokens = fresh
    raw = b"".join(path.read_bytes() for path in db.parent.glob("review.sqlite*"))
    assert all(token.split(".")[1].encode() not in raw for token in tokens.values())
    assert db.stat().st_mode & 0o077 == 0  # readable by the study lead only
    store = ReviewStore(db, run_identity(run))
    assert store.authenticate(tokens["alice"]).name == "alice"
    key_id, secret = tokens["alice"].split(".")
    assert store.authenticate(f"{key_id}.{secret[:-1]}x") is None
    assert store.authenticate(f"{tokens['bob'].split('.')[0]}.{secret}") is None  # alice's secret, bob's id
    with pytest.raises(ReviewStoreError, match="already exists"):
        store.add_account("alice", "reviewer")
    renewed = store.add_account("alice", "reviewer", replace=True)
    assert store.authenticate(tokens["alice"]) is None and store.authenticate(renewed).name == "alice"


def test_a_reset_secret_stops_working_on_a_running_server(
    fresh: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kneepain.review.app as review_app

    run, db, tokens = fresh
    monkeypatch.setattr(review_app, "AUTH_CACHE_SECONDS", 1.0)
    alice = TestClient(create_app(run, db), headers={"X-Review-Token": tokens["alice"]})
    assert alice.get("/api/cases").status_code == 200  # verified, remembered for 1 s
    verified = time.monotonic()
    ReviewStore(db, run_identity(run)).add_account("alice", "reviewer", replace=True)
    time.sleep(max(0.0, verified + 0.6 - time.monotonic()))
    assert alice.get("/api/cases").status_code == 200  # still remembered, and not re-stamped by this use
    time.sleep(max(0.0, verified + 1.1 - time.monotonic()))
    assert alice.get("/api/cases").status_code == 401


def test_sign_in_link_sets_a_strict_cookie_and_cleans_the_address(fresh: tuple) -> None:
    run, db, tokens = fresh
    browser = TestClient(create_app(run, db))
    signin = browser.get("/cases/9100001")
    assert signin.status_code == 401 and "Sign in" in signin.text and "Not for clinical use" in signin.text
    assert browser.get("/api/cases").status_code == 401
    moved = browser.get(f"/cases/9100001?token={tokens['bob']}", follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/cases/9100001"
    cookie = moved.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    browser.cookies.set("kneepain_review_token", tokens["bob"])
    assert browser.get("/api/cases").status_code == 200
    out = browser.get("/signout", follow_redirects=False)
    assert out.status_code == 303 and 'kneepain_review_token=""' in out.headers["set-cookie"]
    assert browser.get("/?token=wrong.secret", follow_redirects=False).status_code == 401


def test_every_page_carries_the_not_for_clinical_use_notice(study: tuple) -> None:
    who = clients(study)
    for account in ("alice", "admin"):
        for path in ("/", "/cases/9100001"):
            assert "Not for clinical use" in who[account].get(path).text


def test_slice_images_are_real_pngs_of_both_layers(study: tuple) -> None:
    alice = clients(study)["alice"]
    mri = cv2.imdecode(np.frombuffer(alice.get("/cases/9100001/slices/left/9/mri.png").content, np.uint8), -1)
    cam = cv2.imdecode(
        np.frombuffer(alice.get("/cases/9100001/slices/right/9/cam.png").content, np.uint8), -1
    )
    assert mri.shape == (224, 224)
    assert cam.shape == (224, 224, 4) and (cam[..., 3] == 255).all()
    assert alice.get("/cases/9100001/slices/right/23/cam.png").status_code == 422
    assert alice.get("/cases/9100001/slices/middle/3/cam.png").status_code == 422


def test_two_reviewers_saving_the_same_case_at_once_are_both_recorded(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    names = tuple(f"reader{i}" for i in range(6))
    tokens = make_study(run, tmp_path / "c.sqlite", reviewers=names)
    app = create_app(run, tmp_path / "c.sqlite")
    start = threading.Barrier(len(names))
    results: list[int] = []

    def save(name: str) -> None:
        client = TestClient(app, headers={"X-Review-Token": tokens[name]})
        start.wait()
        results.append(post(client, "9100001", lesions=["hoffa_synovitis"]).status_code)

    threads = [threading.Thread(target=save, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * len(names)
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        stored = [
            r[0] for r in db.execute("SELECT reviewer FROM reviews WHERE case_id = '9100001' ORDER BY 1")
        ]
    assert stored == list(names)


def test_a_stale_save_is_refused_and_the_newer_record_kept(fresh: tuple) -> None:
    alice = clients(fresh)["alice"]
    assert post(alice, "9100004", lesions=["cartilage_loss"]).status_code == 200
    stale = post(alice, "9100004", lesions=["none"], version=0)  # a second tab that loaded version 0
    assert stale.status_code == 409 and "saved version is 1" in stale.json()["detail"]
    got = alice.get("/api/cases/9100004/review").json()
    assert got["lesions"] == ["cartilage_loss"] and got["version"] == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"lesions": ["tumour"], "version": 0}', "tumour"),
        ('{"lesions": ["none", "other"], "version": 0}', "'none' cannot"),
        ('{"lesions": [], "version": -1}', "version"),
        ('{"lesions": [], "version": 1e400}', "version"),  # was a 500
        ('{"lesions": [], "version": true}', "version"),
        ('{"lesions": [], "version": "1"}', "version"),
        ('{"lesions": [], "version": 1e12}', "version"),
        ('{"lesions": [], "note": "\\ud800", "version": 0}', "note"),  # lone surrogate: was a 500
        ('{"lesions": "effusion", "version": 0}', "lesions"),
        ('{"lesions": [], "version": 0, "admin": true}', "admin"),
        ('{"version": 0}', "lesions"),
        ("reviewer=alice&lesions=none", "json"),
    ],
)
def test_malformed_posts_get_422_with_headers_and_without_echo(study: tuple, body: str, message: str) -> None:
    alice = clients(study)["alice"]
    response = alice.post(
        "/api/cases/9100001/review", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert message in response.text and set(response.headers) >= SECURITY
    assert '"input"' not in response.text
    assert alice.get("/api/cases/9100001/review").json()["version"] == 0


def test_validation_errors_never_echo_the_body(study: tuple) -> None:
    alice = clients(study)["alice"]
    marker = "ECHO-" + "x" * 5000
    response = post(alice, "9100001", note=marker)
    assert response.status_code == 422 and "ECHO-" not in response.text


def test_newline_reviewer_name_is_refused() -> None:
    assert check_reviewer_name("alice") == "alice"
    for name in ("alice\n", "alice\r\n", "\nalice", "alice\x00", ""):
        with pytest.raises(InvalidReviewError):
            check_reviewer_name(name)


def test_errors_carry_the_security_headers(study: tuple) -> None:
    run, db, _ = study
    who = clients(study)
    anonymous = TestClient(create_app(run, db), raise_server_exceptions=False)
    responses = {
        401: anonymous.get("/api/cases"),
        403: who["bob"].get("/api/admin/reviews"),
        404: who["alice"].get("/api/cases/9999999"),
        409: who["alice"].get("/api/cases/9100002/prediction"),
        413: who["alice"].post("/api/cases/9100001/review", content=b"{" + b" " * 70_000 + b"}"),
        422: post(who["alice"], "9100001", version=-1),
    }
    broken = create_app(run, db)
    broken.state.context.store.get = lambda *_: 1 / 0  # a bug in the server gives a 500 with headers
    responses[500] = TestClient(
        broken, headers={"X-Review-Token": study[2]["alice"]}, raise_server_exceptions=False
    ).get("/api/cases/9100001/review")
    for status, response in responses.items():
        assert response.status_code == status, (status, response.text)
        assert set(response.headers) >= SECURITY, status
        assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/cases/..%2F..%2F..%2Fetc%2Fpasswd",
        "/cases/%2e%2e/cam.npy",
        "/api/cases/..%2Fcam%2Fcams.npy/review",
        "/cases/..%2Fcam%2Findex.csv%00/overlay/left.png",
        "/cases/9100001%2F..%2F..%2Frun.json/overlay/left.png",
        "/static/..%2F..%2F..%2Fcam%2Fcams.npy",
        "/static/../store.py",
        "/api/cases/..%5C..%5Crun.json/review",
        "/cases/..%5C..%5Crun.json/overlay/left.png",
    ],
)
def test_path_traversal_serves_nothing(study: tuple, path: str) -> None:
    response = clients(study)["alice"].get(path)
    assert response.status_code in (404, 422)
    assert b"root:" not in response.content and b"NUMPY" not in response.content
    assert b"import" not in response.content


def test_overlay_figures_are_served_only_for_known_cases(fresh: tuple) -> None:
    run = fresh[0]
    alice = clients(fresh)["alice"]
    figure = run / "cam" / "overlays" / "9100001_left.png"
    figure.parent.mkdir()
    figure.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    assert alice.get("/cases/9100001/overlay/left.png").content == figure.read_bytes()
    refused = alice.get("/cases/..%5C9100001/overlay/left.png")
    assert refused.status_code == 404 and "unknown case id" in refused.json()["detail"]


def test_unknown_case_posts_are_refused(fresh: tuple) -> None:
    assert post(clients(fresh)["alice"], "9999999", lesions=["other"]).status_code == 404
    with sqlite3.connect(fresh[1]) as db:
        assert db.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0


def test_a_schema_1_database_is_migrated_keeping_its_labels(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    db = tmp_path / "old.sqlite"
    flags = ", ".join(f"{c} INTEGER NOT NULL" for c in ("effusion_synovitis", "bone_marrow_lesion"))
    others = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in ("hoffa_synovitis", "cartilage_loss"))
    rest = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in ("meniscal_damage", "other", "none"))
    columns = (
        f"{flags}, {others}, {rest}, note TEXT NOT NULL, version INTEGER NOT NULL, saved_at TEXT NOT NULL"
    )
    with sqlite3.connect(db) as old:  # the schema-1 layout as the previous release wrote it
        old.executescript(
            f"""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE reviews (case_id TEXT NOT NULL, reviewer TEXT NOT NULL, {columns},
                run_id TEXT NOT NULL, PRIMARY KEY (case_id, reviewer));
            CREATE TABLE review_history (id INTEGER PRIMARY KEY AUTOINCREMENT, case_id TEXT NOT NULL,
                reviewer TEXT NOT NULL, {columns}, run_id TEXT NOT NULL);
            """
        )
        old.execute("INSERT INTO meta VALUES ('run_id', ?), ('schema_version', '1')", (run_identity(run),))
        for table in ("reviews", "review_history"):
            old.execute(
                f"INSERT INTO {table} (case_id, reviewer, effusion_synovitis, bone_marrow_lesion, note, "
                "version, saved_at, run_id) VALUES ('9100001', 'carol', 1, 0, 'old note', 1, 't', ?)",
                (run_identity(run),),
            )
    store = ReviewStore(db, run_identity(run))
    assert store.get("9100001", "carol").lesions == ("effusion_synovitis",)
    history = store.history()
    assert history["written_by"].isna().all() and history["after_reveal"].isna().all()
    assert store.protocol() == Protocol()
    with sqlite3.connect(db) as migrated:
        migrated.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ReviewStoreError, match="schema '99'"):
        ReviewStore(db, run_identity(run))
    assert SCHEMA_VERSION == "2"


def test_database_of_another_run_is_refused(tmp_path: Path) -> None:
    first = make_review_run(tmp_path, "r1")
    second = make_review_run(tmp_path, "r2")
    make_study(first, tmp_path / "shared.sqlite")
    with pytest.raises(ReviewStoreError, match="belongs to run"):
        create_app(second, tmp_path / "shared.sqlite")
    (tmp_path / "notes.sqlite").write_text("not a database at all, just text that is long enough")
    with pytest.raises(ReviewStoreError, match=r"notes\.sqlite"):
        ReviewStore(tmp_path / "notes.sqlite", "r1")


def test_run_without_cams_is_a_clear_error(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    (run / "cam" / "cams.npy").unlink()
    with pytest.raises(CamInputError, match="kneepain cam"):
        create_app(run, tmp_path / "x.sqlite")


def test_loopback_server_refuses_foreign_host_headers(study: tuple) -> None:
    run, db, tokens = study
    local = TestClient(
        create_app(run, db, allowed_hosts=["127.0.0.1", "localhost"]),
        headers={"X-Review-Token": tokens["alice"]},
    )
    refused = local.get("/", headers={"Host": "evil.example"})
    assert refused.status_code == 400 and set(refused.headers) >= SECURITY
    assert local.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 200


def test_subject_list_matches_the_run(study: tuple) -> None:
    assert [c["case_id"] for c in clients(study)["alice"].get("/api/cases").json()] == SUBJECTS
