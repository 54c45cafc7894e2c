"""`kneepain paper`: every experiment of the study on a small synthetic cohort, killed and resumed,
and the document it writes (published beside ours, methods from run.json, read in Chromium).

One module fixture makes the cohort (synth, ingest, preprocess with a template of 8 knee pairs to
stay fast) and runs `kneepain paper --fast --with all` twice as a user would: the first run is
SIGKILLed after Model B's first fold (KNEEPAIN_KILL_AT), the second completes it without redoing
what was finished.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from browser_pages import open_page
from kneepain.cli import app
from kneepain.paper import PaperOptions
from kneepain.paper.methods import methods_sentences
from kneepain.paper.plan import RUN_A, RUN_B, Experiment, Step, choose
from kneepain.paper.runinfo import run_settings
from workfolder import synthetic_work

if TYPE_CHECKING:
    from playwright.sync_api import Browser

SUBJECTS = 24
SEED = 9
KILL_AT = "cv:fold_done:3"  # --fast has 2 folds: Model A finishes, then Model B's first fold


def _paper(work: Path, seed: int, **env: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "kneepain",
        "paper",
        str(work),
        "--fast",
        "--with",
        "all",
        "--seed",
        str(seed),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "2", **env}
    return subprocess.run(command, capture_output=True, text=True, check=False, env=environment, timeout=600)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort, ingested and preprocessed (registered)."""
    from kneepain.preprocess.config import PreprocessConfig

    root = tmp_path_factory.mktemp("paper")
    return synthetic_work(root, SUBJECTS, SEED, workers=2, config=PreprocessConfig(template_subjects=8))


def split_seed(work: Path) -> int:
    """A seed whose 70/15/15 split of this small Model B has both classes in training and test
    (with ~12 participants the test part holds 2, and train refuses a one-class part)."""
    from kneepain.contracts import training_table
    from kneepain.train import stratified_split

    table = training_table(work, "B")
    for seed in range(200):
        parts = stratified_split(table, seed)
        if all(table.loc[parts == part, "label"].nunique() == 2 for part in ("train", "test")):
            return seed
    raise AssertionError("no split seed gives two classes in the test part; change SEED or SUBJECTS")


@pytest.fixture(scope="module")
def study(cohort: Path) -> dict:
    """`kneepain paper --fast` killed after Model B's first fold, then the same command to the end."""
    seed = split_seed(cohort)
    killed = _paper(cohort, seed, KNEEPAIN_KILL_AT=KILL_AT)
    runs = cohort / "runs"
    before = {
        "killed_rc": killed.returncode,
        "a_complete": json.loads((runs / RUN_A / "run.json").read_text())["status"],
        "b_status": json.loads((runs / RUN_B / "run.json").read_text())["status"],
        "stamps": {
            path: path.stat().st_mtime_ns
            for path in (
                runs / RUN_A / "run.json",
                runs / RUN_A / "predictions.csv",
                runs / RUN_A / "evaluation" / "metrics.json",
                runs / RUN_B / "fold_00" / "bundle" / "model.safetensors",
            )
        },
    }
    finished = _paper(cohort, seed)
    return {"work": cohort, "before": before, "finished": finished, "seed": seed}


def test_killed_paper_resumes_without_redoing_finished_runs(study: dict) -> None:
    before, finished = study["before"], study["finished"]
    assert before["killed_rc"] == -9  # SIGKILL at the kill point, as kill -9 would
    assert before["a_complete"] == "complete" and before["b_status"] == "running"
    assert finished.returncode == 0, finished.stderr[-3000:]
    output = finished.stderr + finished.stdout
    assert "paper: estimated time still to run" in output  # the estimate comes first
    assert output.index("estimated time") < output.index("already done: Model A")
    assert "already done: Model A: 2-fold cross-validation" in output
    assert "--resume" in output  # Model B continued from its finished fold
    for path, stamp in before["stamps"].items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was rewritten"
    record = json.loads((study["work"] / "paper" / "paper.json").read_text())
    assert record["status"] == "complete"
    assert all(e["selected"] for e in record["experiments"])


def test_every_experiment_is_an_ordinary_run_folder(study: dict) -> None:
    work = study["work"]
    runs = [
        work / "runs" / name
        for name in (RUN_A, RUN_B, "paper-review", "paper-review-vgg16-gap", "paper-review-alexnet-gap")
    ] + [work / "unregistered" / "runs" / f"{name}-unregistered" for name in (RUN_A, RUN_B)]
    for run in runs:
        assert json.loads((run / "run.json").read_text())["status"] == "complete", run
        assert (run / "evaluation" / "metrics.json").exists(), run
    tests = [json.loads((run / "split.json").read_text())["test"] for run in runs[2:5]]
    assert tests[0] == tests[1] == tests[2]  # the three networks are compared on the same participants
    areas = {
        run.name: json.loads((run / "cam" / "localization.json").read_text())["area_above_half_pct_mean"]
        for run in runs[2:5]
    }
    assert all(0 <= area <= 100 for area in areas.values()), areas  # measured for each network
    # KneeNet and VGG16-GAP keep a grid of cells at the fast path's 32 px; AlexNet-GAP's map is 1 x 1
    # there (stride 4 and two poolings), so its area is all or nothing and may be 0
    assert areas["paper-review"] > 0 and areas["paper-review-vgg16-gap"] > 0, areas
    unregistered = json.loads((work / "unregistered" / "preprocess" / "config.json").read_text())
    assert unregistered["register"] is False
    comparison = json.loads((runs[5] / "evaluation" / "metrics.json").read_text())["comparisons"][0]
    assert comparison["other_run"] == RUN_A and comparison["n_common"] > 0
    # reusable by the other stages: the report of a paper run builds like any other
    result = CliRunner().invoke(app, ["report", str(runs[2])])
    assert result.exit_code == 0, result.output
    assert (runs[2] / "report.html").exists()


def test_document_puts_published_beside_ours(study: dict) -> None:
    html = (study["work"] / "paper" / "paper.html").read_text()
    assert "SYNTHETIC DATA" in html
    assert html.count("ours on this cohort (synthetic)") >= 8
    for published in ("0.808", "0.853", "0.769", "0.812", "6.0 ± 2.4", "22.3 ± 9.4", "n = 734", "95 (88.8%)"):
        assert published in html, published
    for section in (
        "methods",
        "table1",
        "table2",
        "figure4ab",
        "registration",
        "figure4c",
        "figure3ab",
        "figure3i",
    ):
        assert f'<section id="{section}">' in html, section
    assert "Not available" not in html and "Not run" not in html
    assert html.count('<img id="roc-') == 2 and 'id="cam-case"' in html


def test_methods_paragraph_states_what_run_json_records(study: dict) -> None:
    work = study["work"]
    html = (work / "paper" / "paper.html").read_text()
    for name in (RUN_A, RUN_B, "paper-review-vgg16-gap"):
        info = json.loads((work / "runs" / name / "run.json").read_text())
        training = info.get("config", {}).get("optim") or info["training"]
        recorded = info.get("precision")  # issue 21 records the precision used as a dict
        precision = recorded["precision"] if isinstance(recorded, dict) else training["precision"]
        kind = f"{info['folds']}-fold cross-validation" if info["kind"] == "cv" else "70/15/15 split"
        assert f"{name} (" in html and kind in html
        for fact in (
            f"{training['epochs']} epochs",
            f"{training['optimizer']}, learning rate {training['lr']:g}",
            f"precision {precision}",
            f"seed {info['seed']}",
            f"kneepain {info['package_version']}",
        ):
            assert fact in html, fact
    # the sentence follows run.json, not paper's options: change a copy's recorded epochs
    copy = work / "runs" / "edited"
    copy.mkdir(exist_ok=True)
    info = json.loads((work / "runs" / RUN_A / "run.json").read_text())
    for section in (info.get("training"), info.get("config", {}).get("optim")):  # either run.json layout
        if section:
            section["epochs"] = 123
    (copy / "run.json").write_text(json.dumps(info))
    sentences = " ".join(methods_sentences({"edited": copy}))
    assert "123 epochs" in sentences and "edited (2-fold cross-validation of Model A" in sentences


def test_review_database_gives_figure_3i_and_agreement(study: dict, tmp_path: Path) -> None:
    import pandas as pd

    from kneepain.cam.compute import run_identity
    from kneepain.review.store import ReviewStore

    work = study["work"]
    review = work / "runs" / "paper-review"
    db = tmp_path / "review.sqlite"
    store = ReviewStore(db, run_identity(review))
    cases = pd.read_csv(review / "cam" / "index.csv", dtype={"subject_id": str})["subject_id"].tolist()
    for reviewer, lesions in (("alice", ["effusion_synovitis"]), ("bob", ["bone_marrow_lesion"])):
        store.add_account(reviewer, "reviewer")
        for case in cases:
            store.save(case, reviewer, lesions, "", 0)
    out = tmp_path / "document"
    arguments = ["paper", str(work), "--fast", "--with", "all", "--seed", str(study["seed"])]
    result = CliRunner().invoke(app, [*arguments, "--review-db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "paper.html").read_text()
    assert "Reviewer alice" in html and "Reviewer bob" in html and "Agreement between reviewers" in html
    assert f"{len(cases)} (100.0%)" in html  # alice saw effusion-synovitis in every case
    assert "generator's lesion masks" not in html
    assert (review / "review" / "lesion_table.csv").exists()


def test_run_settings_reads_the_issue_20_layout() -> None:
    new = {
        "kind": "cv",
        "folds": 10,
        "seed": 3,
        "model": "A",
        "preset": "small",
        "config": {
            "model": {"branch": "vgg16_gap", "width": 0.25, "input_size": 96, "mode": "joint"},
            "optim": {"optimizer": "adam", "lr": 0.003, "batch_size": 16, "epochs": 20},
            "runtime": {"precision": "bf16", "device": "cuda"},
            "data": {},
        },
    }
    settings = run_settings(new)
    assert (settings.branch, settings.input_size, settings.epochs, settings.precision) == (
        "vgg16_gap",
        96,
        20,
        "bf16",
    )
    assert (settings.preset, settings.folds, settings.optimizer, settings.device) == (
        "small",
        10,
        "adam",
        "cuda",
    )


def test_experiments_over_the_budget_wait_behind_an_option(tmp_path: Path) -> None:
    def experiment(name: str, seconds: float) -> Experiment:
        return Experiment(name, name, [Step(name, [], done=lambda: False, estimate_s=seconds)])

    experiments = [
        experiment("model-a", 1800),
        experiment("architectures", 600),
        experiment("unregistered", 3000),
    ]
    choose(experiments, PaperOptions(work=tmp_path, budget_minutes=45))
    assert [e.selected for e in experiments] == [True, True, False]
    assert "--with unregistered" in experiments[2].why_not and "50 min" in experiments[2].why_not
    choose(experiments, PaperOptions(work=tmp_path, budget_minutes=45, include=("unregistered",)))
    assert experiments[2].selected


def test_paper_refuses_a_folder_without_a_cache(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["paper", str(tmp_path), "--fast"])
    assert result.exit_code == 2
    assert "cohort.csv: not found; run `kneepain ingest`" in result.output.replace("\n", "")


@pytest.mark.browser
def test_document_reads_well_in_chromium(study: dict, chromium: Browser) -> None:
    document = study["work"] / "paper" / "paper.html"
    requests: list[str] = []
    for width in (1280, 420):
        page = open_page(chromium, document, width, requests)
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0
        shaded = page.evaluate(
            "document.querySelectorAll('th.pub').length + ' ' + document.querySelectorAll('th.ours').length"
        )
        assert all(int(n) >= 8 for n in shaded.split())
        assert all(url.startswith(("file:", "data:")) for url in requests)  # self-contained
        page.close()
