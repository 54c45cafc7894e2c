"""`kneepain review export`: the Figure 3I table per reviewer and Cohen's kappa between reviewers."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from kneepain.cam.compute import run_identity
from kneepain.cli import app
from kneepain.review.store import ReviewStore
from test_review_app import make_review_run

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


def test_export_refuses_a_database_of_another_run(tmp_path: Path) -> None:
    first = make_review_run(tmp_path, "r1")
    second = make_review_run(tmp_path, "r2")
    ReviewStore(tmp_path / "r1.sqlite", run_identity(first)).save("9100001", "alice", ["other"], "", 0)
    result = CliRunner().invoke(app, ["review", "export", str(second), "--db", str(tmp_path / "r1.sqlite")])
    assert result.exit_code == 2
    assert "belongs to run" in result.output.replace("\n", "")
    assert not (second / "review").exists()


def test_serve_refuses_a_network_address_without_token(tmp_path: Path) -> None:
    run = make_review_run(tmp_path)
    result = CliRunner().invoke(
        app, ["review", "serve", str(run), "--db", str(tmp_path / "x.sqlite"), "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2
    assert "--token" in result.output
    assert not (tmp_path / "x.sqlite").exists()
