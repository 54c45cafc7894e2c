"""The review app through HTTP: blinded case pages, saves in SQLite, concurrency, bad input, access control.

The run folder is real files: a slice cache, predictions, and CAM outputs written by the CAM
stage's own writer (arrays made here, so these tests need no trained model).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from kneepain.cam.compute import CamInputError, CamResult, cam_index, run_identity, write_cam_outputs
from kneepain.review.app import create_app
from kneepain.review.store import ReviewStore, ReviewStoreError

SUBJECTS = ["9100001", "9100002", "9100003", "9100004"]
LABELS = [1, 0, 1, 0]
PROBS = [0.9, 0.2, 0.3, 0.6]  # the last two predicted wrong


def make_review_run(root: Path, name: str = "r1") -> Path:
    """WORK/preprocess cache + index, and WORK/runs/<name> with predictions and cam/ outputs."""
    work = root / "work"
    pre = work / "preprocess"
    if not pre.exists():
        pre.mkdir(parents=True)
        rng = np.random.default_rng(1)
        cache = rng.integers(0, 200, size=(len(SUBJECTS), 2, 23, 224, 224), dtype=np.uint8)
        np.save(pre / "cache.npy", cache)
        pd.DataFrame(
            {
                "row": range(len(SUBJECTS)),
                "subject_id": SUBJECTS,
                "centre_left": 30,
                "centre_right": 30,
                "qc_pass": True,
                "qc_reason": "",
            }
        ).to_csv(pre / "index.csv", index=False)
    run = work / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"work": str(work)}))
    subjects = pd.DataFrame(
        {"subject_id": SUBJECTS, "fold": [0, 0, 1, 1], "split": "test", "prob_right": PROBS, "label": LABELS}
    )
    subjects.to_csv(run / "predictions.csv", index=False)
    subjects["cache_row"] = range(len(SUBJECTS))
    cams = np.random.default_rng(2).normal(size=(len(SUBJECTS), 2, 23, 28, 28)).astype(np.float32)
    cams[:, :, 9, 10:13, 10:13] += 30.0  # slice 9 has the highest mean for every knee
    write_cam_outputs(run / "cam", CamResult(cams, cam_index(subjects, cams), {"run_id": run_identity(run)}))
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_review_run(tmp_path)


@pytest.fixture
def client(run: Path, tmp_path: Path) -> TestClient:
    return TestClient(create_app(run, tmp_path / "review.sqlite", reviewer="alice"))


def post(client: TestClient, case_id: str, **review: object) -> object:
    body = {"reviewer": "alice", "lesions": [], "note": "", "version": 0, **review}
    return client.post(f"/api/cases/{case_id}/review", json=body)


def test_case_pages_are_blinded_until_the_reviewer_asks(client: TestClient) -> None:
    listing = client.get("/")
    assert listing.status_code == 200
    assert all(f"/cases/{sid}" in listing.text for sid in SUBJECTS)
    page = client.get("/cases/9100003")
    assert page.status_code == 200
    info = client.get("/api/cases/9100003").json()
    for text in (page.text, json.dumps(info)):
        assert "0.3" not in text and "prob" not in text and "predicted" not in text
    assert info["painful_side"] == "right" and info["best_slice"] == 9
    assert info["previous"] == "9100002" and info["next"] == "9100004"
    revealed = client.get("/api/cases/9100003/prediction").json()
    assert revealed == {"prob_right": 0.3, "predicted_side": "left", "correct": False}


def test_slice_images_are_real_pngs_of_both_layers(client: TestClient) -> None:
    mri = cv2.imdecode(
        np.frombuffer(client.get("/cases/9100001/slices/left/9/mri.png").content, np.uint8), -1
    )
    cam = cv2.imdecode(
        np.frombuffer(client.get("/cases/9100001/slices/right/9/cam.png").content, np.uint8), -1
    )
    assert mri.shape == (224, 224)
    assert cam.shape == (224, 224, 4) and (cam[..., 3] == 255).all()
    assert client.get("/cases/9100001/slices/right/23/cam.png").status_code == 422
    assert client.get("/cases/9100001/slices/middle/3/cam.png").status_code == 422


def test_save_is_committed_to_sqlite_with_reviewer_and_history(client: TestClient, tmp_path: Path) -> None:
    first = post(client, "9100002", lesions=["effusion_synovitis"], note="joint effusion")
    assert first.status_code == 200 and first.json()["version"] == 1
    second = post(client, "9100002", lesions=["effusion_synovitis", "bone_marrow_lesion"], version=1)
    assert second.json()["version"] == 2
    with sqlite3.connect(tmp_path / "review.sqlite") as db:
        row = db.execute(
            "SELECT reviewer, effusion_synovitis, bone_marrow_lesion, none, version FROM reviews "
            "WHERE case_id = ?",
            ("9100002",),
        ).fetchone()
        history = db.execute("SELECT count(*) FROM review_history WHERE case_id = '9100002'").fetchone()[0]
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert row == ("alice", 1, 1, 0, 2)
    assert history == 2 and mode == "wal"
    got = client.get("/api/cases/9100002/review", params={"reviewer": "alice"}).json()
    assert got["lesions"] == ["effusion_synovitis", "bone_marrow_lesion"] and got["note"] == ""


def test_two_reviewers_saving_the_same_case_at_once_are_both_recorded(
    client: TestClient, tmp_path: Path
) -> None:
    start = threading.Barrier(8)
    results: list[int] = []

    def save(name: str) -> None:
        start.wait()
        results.append(post(client, "9100001", reviewer=name, lesions=["hoffa_synovitis"]).status_code)

    threads = [threading.Thread(target=save, args=(f"reader{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 8
    with sqlite3.connect(tmp_path / "review.sqlite") as db:
        names = [
            r[0] for r in db.execute("SELECT reviewer FROM reviews WHERE case_id = '9100001' ORDER BY 1")
        ]
    assert names == [f"reader{i}" for i in range(8)]


def test_a_stale_save_is_refused_and_the_newer_record_kept(client: TestClient) -> None:
    assert post(client, "9100004", lesions=["cartilage_loss"]).status_code == 200
    stale = post(client, "9100004", lesions=["none"], version=0)  # a second tab that loaded version 0
    assert stale.status_code == 409
    assert "saved version is 1" in stale.json()["detail"]
    got = client.get("/api/cases/9100004/review", params={"reviewer": "alice"}).json()
    assert got["lesions"] == ["cartilage_loss"] and got["version"] == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"reviewer": "alice", "lesions": ["tumour"], "note": "", "version": 0}, "tumour"),
        ({"reviewer": "alice", "lesions": ["none", "other"], "note": "", "version": 0}, "'none' cannot"),
        ({"reviewer": "../x", "lesions": [], "note": "", "version": 0}, "reviewer"),
        ({"reviewer": "alice", "lesions": [], "note": "", "version": -1}, "version"),
        ({"reviewer": "alice", "lesions": "effusion", "note": "", "version": 0}, "lesions"),
        ({"reviewer": "alice", "lesions": [], "note": "", "version": 0, "admin": True}, "admin"),
        ({"lesions": [], "version": 0}, "reviewer"),
    ],
)
def test_malformed_posts_get_422_with_a_message(client: TestClient, body: dict, message: str) -> None:
    response = client.post("/api/cases/9100001/review", json=body)
    assert response.status_code == 422
    assert message in json.dumps(response.json())
    assert client.get("/api/cases/9100001/review", params={"reviewer": "alice"}).json()["version"] == 0


def test_non_json_post_gets_422(client: TestClient) -> None:
    response = client.post(
        "/api/cases/9100001/review",
        content="reviewer=alice&lesions=none",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/cases/..%2F..%2F..%2Fetc%2Fpasswd",
        "/cases/%2e%2e/cam.npy",
        "/api/cases/..%2Fcam%2Fcams.npy/review?reviewer=alice",
        "/cases/..%2Fcam%2Findex.csv%00/overlay/left.png",
        "/cases/9100001%2F..%2F..%2Frun.json/overlay/left.png",
        "/static/..%2F..%2F..%2Fcam%2Fcams.npy",
        "/static/../store.py",
        "/api/cases/..%5C..%5Crun.json/review?reviewer=alice",
        "/cases/..%5C..%5Crun.json/overlay/left.png",
    ],
)
def test_path_traversal_serves_nothing(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422)
    assert (
        b"root:" not in response.content
        and b"NUMPY" not in response.content
        and b"import" not in response.content
    )


def test_overlay_figures_are_served_only_for_known_cases(client: TestClient, run: Path) -> None:
    figure = run / "cam" / "overlays" / "9100001_left.png"
    figure.parent.mkdir()
    figure.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    assert client.get("/cases/9100001/overlay/left.png").content == figure.read_bytes()
    refused = client.get("/cases/..%5C9100001/overlay/left.png")
    assert refused.status_code == 404 and "unknown case id" in refused.json()["detail"]


def test_unknown_case_posts_are_refused(client: TestClient, tmp_path: Path) -> None:
    assert post(client, "9999999", lesions=["other"]).status_code == 404
    with sqlite3.connect(tmp_path / "review.sqlite") as db:
        assert db.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0


def test_token_is_required_when_set(run: Path, tmp_path: Path) -> None:
    guarded = TestClient(create_app(run, tmp_path / "t.sqlite", token="s3cret-token-123"))
    assert guarded.get("/").status_code == 401
    assert guarded.get("/cases/9100001/slices/left/0/mri.png").status_code == 401
    assert guarded.get("/", headers={"X-Review-Token": "wrong"}).status_code == 401
    assert guarded.get("/", headers={"X-Review-Token": "s3cret-token-123"}).status_code == 200
    assert guarded.get("/?token=s3cret-token-123").status_code == 200  # sets the cookie
    assert guarded.get("/api/cases").status_code == 200


def test_database_of_another_run_is_refused(tmp_path: Path) -> None:
    first = make_review_run(tmp_path, "r1")
    second = make_review_run(tmp_path, "r2")
    create_app(first, tmp_path / "shared.sqlite")
    with pytest.raises(ReviewStoreError, match="belongs to run"):
        create_app(second, tmp_path / "shared.sqlite")
    (tmp_path / "notes.sqlite").write_text("not a database at all, just text that is long enough")
    with pytest.raises(ReviewStoreError, match=r"notes\.sqlite"):
        ReviewStore(tmp_path / "notes.sqlite", "r1")


def test_run_without_cams_is_a_clear_error(run: Path, tmp_path: Path) -> None:
    (run / "cam" / "cams.npy").unlink()
    with pytest.raises(CamInputError, match="kneepain cam"):
        create_app(run, tmp_path / "x.sqlite")


def test_loopback_server_refuses_foreign_host_headers(run: Path, tmp_path: Path) -> None:
    local = TestClient(create_app(run, tmp_path / "h.sqlite", allowed_hosts=["127.0.0.1", "localhost"]))
    assert local.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert local.get("/", headers={"Host": "127.0.0.1:8765"}).status_code == 200
