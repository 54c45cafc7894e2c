"""kill -9 at many points of ingest, preprocess, cv and cam, then re-run: the same bytes, no orphans.

Each stage runs as a real ``kneepain`` child process. ``KNEEPAIN_KILL_AT`` (kneepain.workers)
makes the main process SIGKILL itself at a named point (before, during and after the parallel
part, during the merge, between the two renames of a folder swap); one cv kill is timed on the
first training checkpoint appearing instead. The kills are chained: each re-run is killed at the
next point and resumes from what the previous one left, and a final run completes. Then:
outputs byte-identical to an uninterrupted run (timings aside), no process of the run alive
(found by a marker in the environment every worker inherits), no temporary file left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from workfolder import make_work

KILLS_TRIED: list[str] = []
TIMING = re.compile(r"second|per_s|_share")  # JSON keys that measure time, not results
TEMPORARY = re.compile(r"^\..*\.(tmp|old|staged)$")
CV_ARGS = ("--preset", "tiny", "--folds", "2", "--epochs", "2", "--device", "cpu", "--run", "cv")


class Runner:
    """Runs ``kneepain`` children marked with one tag, so their processes can be found afterwards."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex

    def env(self, kill_at: str | None) -> dict[str, str]:
        return os.environ | {"KNEEPAIN_FAULT_TAG": self.tag, "KNEEPAIN_KILL_AT": kill_at or ""}

    def run(self, *args: object, kill_at: str | None = None) -> str:
        """Run to the end (or to the kill point: then the exit must be SIGKILL's)."""
        command = [sys.executable, "-m", "kneepain", *map(str, args)]
        done = subprocess.run(command, env=self.env(kill_at), capture_output=True, text=True, timeout=300)
        output = done.stdout + done.stderr
        if kill_at:
            assert done.returncode == -signal.SIGKILL, f"{kill_at} never reached:\n{output}"
            KILLS_TRIED.append(kill_at)
        else:
            assert done.returncode == 0, output
        assert "Traceback" not in output, output
        self.assert_no_process()
        return output

    def run_killed_when(self, path_glob: Path, *args: object) -> None:
        """Run, and kill -9 the main process as soon as a file matching ``path_glob`` appears."""
        command = [sys.executable, "-m", "kneepain", *map(str, args)]
        process = subprocess.Popen(
            command, env=self.env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while not list(path_glob.parent.glob(path_glob.name)) and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.kill()
        assert process.wait() == -signal.SIGKILL, "the run ended before the file appeared"
        KILLS_TRIED.append(f"when {path_glob.name} appeared")
        self.assert_no_process()

    def processes(self) -> list[int]:
        marker = f"KNEEPAIN_FAULT_TAG={self.tag}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "environ").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found

    def assert_no_process(self, wait: float = 5.0) -> None:
        """Every process of the run (workers, resource tracker) gone within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while (alive := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive, f"processes outlived the killed run: {alive}"


def normalised(path: Path, here: str = "", there: str = "") -> object:
    """A file's content for comparison: bytes, or JSON without timings and the work folder's path
    (the reference runs in another folder)."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "work" and not TIMING.search(k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    if path.suffix in (".json", ".jsonl"):
        text = path.read_text().replace(here, there) if here else path.read_text()
        return (
            [strip(json.loads(line)) for line in text.splitlines() if line]
            if path.suffix == ".jsonl"
            else (strip(json.loads(text)))
        )
    return path.read_bytes()


def assert_same_outputs(
    folder: Path, reference: Path, work: Path | None = None, ref_work: Path | None = None
) -> None:
    """The same files with the same content; paths inside JSON may differ by the work folder."""
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    expected = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == expected
    swap = (str(work), str(ref_work)) if work and ref_work else ("", "")
    different = [str(f) for f in files if normalised(folder / f, *swap) != normalised(reference / f)]
    assert not different, f"differ from the uninterrupted run: {different}"


def assert_no_temporary(folder: Path) -> None:
    left = [str(p) for p in folder.rglob(".*") if TEMPORARY.match(p.name)]
    assert not left, f"temporary files left: {left}"


@pytest.fixture(scope="module", autouse=True)
def report_kill_points() -> object:
    """Print how many kill points the module tried (``pytest -s`` shows it; issue 16 asks)."""
    yield
    print(f"\nkill points tried: {len(KILLS_TRIED)}: {KILLS_TRIED}")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kneepain.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("fault_cohort")
    generate_cohort(root, 5, seed=6, workers=1)
    return root


def test_synth_killed_leaves_no_worker_and_reruns_to_the_same_files(images: Path, tmp_path: Path) -> None:
    """synth's spawned workers end with it; the re-run writes the files of an uninterrupted run."""
    runner = Runner()
    args = ("synth", "--out", tmp_path / "cohort", "--subjects", 5, "--seed", 6, "--workers", 2)
    runner.run(*args, kill_at="synth:subject:2")
    runner.run(*args)
    assert_same_outputs(tmp_path / "cohort", images)
    assert_no_temporary(tmp_path)


@pytest.fixture(scope="module")
def ingested(images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted ingest (the reference) and the same stage killed at every point."""
    root = tmp_path_factory.mktemp("fault_ingest")
    runner = Runner()
    reference, work = root / "reference", root / "work"
    args = ("ingest", "--images", images / "images", "--clinical", images / "clinical", "--workers", "2")
    runner.run(*args, "--out", reference)
    for point in ("ingest:start", "ingest:headers:3", "ingest:scanned", "ingest:writing"):
        runner.run(*args, "--out", work, kill_at=point)
    runner.run(*args, "--out", work)
    assert_same_outputs(work / "ingest", reference / "ingest")
    runner.run(
        *args, "--out", work, kill_at="fileio:swap"
    )  # between moving the old folder and the new one in
    assert not (work / "ingest").exists()
    runner.run(*args, "--out", work)
    return reference, work


def test_ingest_killed_anywhere_reruns_to_the_same_output(ingested: tuple[Path, Path]) -> None:
    reference, work = ingested
    assert_same_outputs(work / "ingest", reference / "ingest")
    assert_no_temporary(work)


def test_preprocess_killed_anywhere_reruns_to_the_same_cache(
    ingested: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = Runner()
    reference, work = tmp_path / "reference", tmp_path / "work"
    for folder in (reference, work):
        shutil.copytree(ingested[0] / "ingest", folder / "ingest")
    runner.run("preprocess", reference, "--workers", "2")
    points = (
        "preprocess:template",
        "preprocess:subject:2",
        "preprocess:parts_done",
        "preprocess:merge:3",
        "preprocess:tables",
    )
    for point in points:
        runner.run("preprocess", work, "--workers", "2", kill_at=point)
    output = runner.run("preprocess", work, "--workers", "2")
    assert "recomputed 0" in output  # what the killed runs finished was reused, not redone
    assert_same_outputs(work / "preprocess", reference / "preprocess")
    assert_no_temporary(work)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted tiny cv run (the reference) and the same run killed and resumed."""
    root = tmp_path_factory.mktemp("fault_cv")
    config = {"register": False, "image_size": 32, "crop_mm": 105.0, "package_version": "test"}
    reference = make_work(root / "reference", n=16, size=32, seed=2, config=config)
    work = make_work(root / "work", n=16, size=32, seed=2, config=config)
    runner = Runner()
    runner.run("cv", reference, *CV_ARGS)
    runner.run_killed_when(work / "runs" / "cv" / "fold_00" / "checkpoint", "cv", work, *CV_ARGS)
    runner.run("cv", work, *CV_ARGS, "--resume", kill_at="cv:bundle_written")
    runner.run("cv", work, *CV_ARGS, "--resume")
    return reference, work


def test_cv_killed_anywhere_resumes_to_the_same_run(trained: tuple[Path, Path]) -> None:
    reference, work = trained
    assert_same_outputs(work / "runs" / "cv", reference / "runs" / "cv", work, reference)
    assert_no_temporary(work)


def test_cam_killed_anywhere_reruns_to_the_same_maps(trained: tuple[Path, Path]) -> None:
    reference, work = trained
    runner = Runner()
    args = ("--no-overlays", "--batch-size", "2")
    runner.run("cam", reference / "runs" / "cv", *args)
    run = work / "runs" / "cv"
    runner.run("cam", run, *args, kill_at="cam:batch:3")
    runner.run("cam", run, *args)
    assert_same_outputs(run / "cam", reference / "runs" / "cv" / "cam", work, reference)
    assert_no_temporary(work)


def test_resume_refuses_a_run_whose_cache_was_rebuilt(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """A fold resumed on a changed cache would mix two caches' models: refused, naming run.json."""
    from kneepain.train.cv import RunInputError, run_cv
    from kneepain.train.loop import preset

    work = tmp_path / "work"
    shutil.copytree(trained[1] / "ingest", work / "ingest")
    shutil.copytree(trained[1] / "preprocess", work / "preprocess")
    shutil.copytree(trained[1] / "runs" / "cv", work / "runs" / "cv")
    config_path = work / "preprocess" / "config.json"
    config = json.loads(config_path.read_text())
    config["content_sha256"] = "rebuilt"
    config_path.write_text(json.dumps(config))
    tiny = preset("tiny", {}, {"epochs": 2, "device": "cpu"})
    with pytest.raises(RunInputError, match=r"run\.json: was made from another version of the slice cache"):
        run_cv(work, "cv", folds=2, config=tiny, resume=True, show_progress=False)
    cohort = work / "ingest" / "cohort.csv"
    config_path.write_text((trained[1] / "preprocess" / "config.json").read_text())
    cohort.write_text(cohort.read_text().replace(",True,True,True,", ",True,True,False,", 1))
    with pytest.raises(RunInputError, match="another training table"):
        run_cv(work, "cv", folds=2, config=tiny, resume=True, show_progress=False)
