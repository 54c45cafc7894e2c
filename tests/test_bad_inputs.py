"""Every bad input of issue 16 through the real command line: exit code 2, one line, no traceback.

Inputs are real files: tiny DICOM series (16 x 16 pixels, from ``ingest_fixtures``), a random
tiny bundle saved the way training saves one, hostile DICOM files written byte by byte (a 0.5 MiB
deflated file declaring 16384 x 16384, a file declaring 65535 x 65535), a UTF-16 clinical file,
and folder names holding Rich markup and an ANSI escape. Most cases run through Typer's
CliRunner; the hostile files run in a child process whose peak memory is read with ``os.wait4``,
and the internal-error case runs the installed entry point's code in a child as well.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pandas as pd
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from ingest_fixtures import Participant, series_folder, write_clinical, write_images, write_series
from kneepain.cli import INTERNAL_ERROR_CODE, app
from kneepain.preprocess.config import PreprocessConfig
from kneepain.preprocess.series_io import MAX_SLICE_PIXELS, SLICE_PIXELS_ENV

MEMORY_LIMIT_MB = 1024
SUBJECTS = ("9000001", "9000002", "9000003")


@pytest.fixture(scope="module")
def deflated_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 MiB deflated DICOM file declaring 16384 x 16384 pixels (512 MiB inflated)."""
    folder = tmp_path_factory.mktemp("bomb")
    write_series(folder / "series", subject="9100001", description="SAG_IW_TSE_RIGHT", n_slices=1)
    write_deflated(folder / "bomb", folder / "series" / "001", 16384, 16384)
    assert (folder / "bomb").stat().st_size < 1 << 20
    return folder / "bomb"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny OAI-format tree, one knee pair of 25 slices for predict, and a random tiny bundle."""
    from kneepain.model import build_model, save_bundle
    from kneepain.train.loop import preset

    root = tmp_path_factory.mktemp("bad_inputs")
    people = [Participant(s) for s in SUBJECTS]
    visit = write_images(root / "images", people)
    write_clinical(root / "clinical", people)
    left, right = root / "pair" / "left", root / "pair" / "right"
    write_series(left, subject="9100001", description="SAG_IW_TSE_LEFT", n_slices=25)
    write_series(right, subject="9100001", description="SAG_IW_TSE_RIGHT", n_slices=25)
    arch, _ = preset("tiny")
    torch.manual_seed(0)
    model = build_model(arch.__class__.from_json({**arch.to_json(), "input_size": 16})).eval()
    preprocessing = PreprocessConfig(register=False, image_size=16).to_json()
    bundle = save_bundle(
        model, {"preprocessing": preprocessing, "training": {}}, root / "run" / "fold_00" / "bundle"
    )
    return {"root": root, "visit": visit, "left": left, "right": right, "bundle": bundle}


def cli(*args: object) -> tuple[int, str]:
    """Run ``kneepain ARGS`` in this process; return the exit code and everything printed."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return result.exit_code, result.output


def child(*args: object, code: str | None = None) -> tuple[int, str, float]:
    """Run ``kneepain ARGS`` (or ``code``) in a child process; exit code, stderr+stdout, peak MB."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "kneepain", *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, output, usage.ru_maxrss / 1024


def assert_refused(code: int, output: str, *needles: str) -> None:
    """Exit code 2, exactly one line, no traceback, and every needle in the line."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], lines[0]


def copy_pair(site: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    left, right = tmp_path / "left", tmp_path / "right"
    shutil.copytree(site["left"], left)
    shutil.copytree(site["right"], right)
    return left, right


def write_deflated(path: Path, template: Path, rows: int, columns: int) -> None:
    """A deflated DICOM file declaring ``rows`` x ``columns`` of zeros, streamed (never in memory)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    dataset = pydicom.dcmread(template, stop_before_pixels=True)
    dataset.Rows, dataset.Columns = rows, columns
    meta = dataset.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body, head = DicomBytesIO(), DicomBytesIO()
    for buffer in (body, head):
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(body, pydicom.Dataset({element.tag: element for element in dataset}))
    write_file_meta_info(head, meta)
    size = rows * columns * 2
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 24)
    with open(path, "wb") as out:
        out.write(bytes(128) + b"DICM" + head.getvalue())
        out.write(deflater.compress(body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)))
        for start in range(0, size, len(zeros)):
            out.write(deflater.compress(zeros[: min(len(zeros), size - start)]))
        out.write(deflater.flush())


def write_huge_header(path: Path, template: Path) -> None:
    """A copy of ``template`` whose header declares 65535 x 65535 pixels (its pixel data unchanged)."""
    dataset = pydicom.dcmread(template)
    dataset.Rows = dataset.Columns = 65535
    dataset.save_as(path)


# --- predict ------------------------------------------------------------------------------------
def test_predict_with_a_truncated_file_names_it(site: dict[str, Path], tmp_path: Path) -> None:
    left, right = copy_pair(site, tmp_path)
    damaged = sorted(right.iterdir())[4]
    damaged.write_bytes(damaged.read_bytes()[:-100])
    code, output = cli("predict", "--left", left, "--right", right, "--model", site["bundle"])
    assert_refused(code, output, str(damaged), "pixel data unreadable", "replace the file")


def test_predict_model_pointing_at_a_file_a_fold_folder_or_nothing(site: dict[str, Path]) -> None:
    pair = ("--left", site["left"], "--right", site["right"])
    weights = site["bundle"] / "model.safetensors"
    code, output = cli("predict", *pair, "--model", weights)
    assert_refused(code, output, f"{weights}: is a file", f"e.g. {site['bundle']}")
    fold = site["bundle"].parent
    code, output = cli("predict", *pair, "--model", fold)
    assert_refused(code, output, f"looks like a fold folder: use {site['bundle']}")
    code, output = cli("predict", *pair, "--model", fold.parent)
    assert_refused(code, output, f"looks like a run folder: use one fold's bundle, e.g. {site['bundle']}")


def test_predict_with_corrupt_weights(site: dict[str, Path], tmp_path: Path) -> None:
    bundle = shutil.copytree(site["bundle"], tmp_path / "bundle")
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, output = cli("predict", "--left", site["left"], "--right", site["right"], "--model", bundle)
    assert_refused(code, output, f"{weights}: unreadable weights", "copy the bundle again")


def test_predict_refuses_a_deflated_bomb_from_its_header(
    site: dict[str, Path], tmp_path: Path, deflated_bomb: Path
) -> None:
    left, right = copy_pair(site, tmp_path)
    target = right / "zz_hostile"
    shutil.copy(deflated_bomb, target)
    code, output, peak_mb = child("predict", "--left", left, "--right", right, "--model", site["bundle"])
    assert_refused(code, output, str(target), "16384 x 16384", "more than the limit of 16777216 per file")
    assert "--max-slice-pixels" in output
    assert peak_mb < MEMORY_LIMIT_MB, f"peak {peak_mb:.0f} MB"


def test_predict_refuses_rows_and_columns_of_65535(
    site: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        SLICE_PIXELS_ENV, str(MAX_SLICE_PIXELS)
    )  # the in-process run below raises it: undone after
    left, right = copy_pair(site, tmp_path)
    target = left / "zz_hostile"
    write_huge_header(target, sorted(left.iterdir())[0])
    code, output = cli("predict", "--left", left, "--right", right, "--model", site["bundle"])
    assert_refused(code, output, str(target), "65535 x 65535", "more than the limit of 16777216 per file")
    raised = cli(
        "predict", "--left", left, "--right", right, "--model", site["bundle"], "--max-slice-pixels", 2**33
    )
    assert raised[0] == 2 and "65535" not in raised[1]  # the limit raised: refused later, for another reason


# --- ingest -------------------------------------------------------------------------------------
def test_ingest_out_pointing_at_a_file_is_refused_before_reading(
    site: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "work.txt"
    out.write_text("keep me")
    # The image root does not exist: a refusal naming --out shows it was checked first.
    code, output = cli(
        "ingest", "--images", tmp_path / "nowhere", "--clinical", site["root"] / "clinical", "--out", out
    )
    assert_refused(code, output, f"{out}: --out is an existing file")
    assert out.read_text() == "keep me"


def test_ingest_into_a_folder_with_an_unrelated_ingest_folder_deletes_nothing(
    site: dict[str, Path], tmp_path: Path
) -> None:
    notes = tmp_path / "ingest" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("the user's own notes")
    code, output = cli(
        "ingest",
        "--images",
        site["root"] / "images",
        "--clinical",
        site["root"] / "clinical",
        "--out",
        tmp_path,
    )
    assert_refused(code, output, f"{notes.parent}: holds files kneepain ingest did not write ('notes.txt')")
    assert notes.read_text() == "the user's own notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingest"]


def test_ingest_says_a_clinical_file_is_utf16(site: dict[str, Path], tmp_path: Path) -> None:
    clinical = shutil.copytree(site["root"] / "clinical", tmp_path / "clinical")
    for path in clinical.rglob("*.txt"):
        path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    code, output = cli(
        "ingest", "--images", site["root"] / "images", "--clinical", clinical, "--out", tmp_path / "w"
    )
    assert_refused(code, output, "is encoded as UTF-16 (little-endian)", "save it as UTF-8")
    assert not (tmp_path / "w").exists()


def test_ingest_records_hostile_series_from_headers_within_memory(
    site: dict[str, Path], tmp_path: Path, deflated_bomb: Path
) -> None:
    images = shutil.copytree(site["root"] / "images", tmp_path / "images")
    people = {s: Participant(s) for s in SUBJECTS}
    deflated = series_folder(images / "00m", people[SUBJECTS[0]], "left")
    huge = series_folder(images / "00m", people[SUBJECTS[1]], "right")
    shutil.copy(deflated_bomb, deflated / "zz_hostile")
    write_huge_header(huge / "zz_hostile", sorted(huge.iterdir())[0])
    work = tmp_path / "work"
    code, output, peak_mb = child(
        "ingest", "--images", images, "--clinical", site["root"] / "clinical", "--out", work, "--workers", "1"
    )
    assert code == 0 and "Traceback" not in output, output
    assert peak_mb < MEMORY_LIMIT_MB, f"peak {peak_mb:.0f} MB"
    series = pd.read_csv(work / "ingest" / "series.csv", dtype=str, keep_default_na=False)
    problems = dict(zip(series["path"], series["problem"], strict=True))
    assert "more than the limit of 16777216 per file" in problems[str(deflated.resolve())]
    assert "65535 x 65535" in problems[str(huge.resolve())]
    assert problems[str(series_folder(images / "00m", people[SUBJECTS[2]], "left").resolve())] == ""


# --- preprocess and the console -----------------------------------------------------------------
def test_preprocess_with_an_unreadable_series_table(tmp_path: Path) -> None:
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "series.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x01")
    (tmp_path / "ingest" / "cohort.csv").write_text("subject_id\n")
    code, output = cli("preprocess", tmp_path)
    assert_refused(code, output, f"{tmp_path / 'ingest'}: series.csv or cohort.csv is not a readable table")
    assert not (tmp_path / "preprocess").exists()


@pytest.mark.parametrize(
    "name",
    ["x[link=https:example.org]click[/link]", "[red]oops[/red] [", "esc\x1b[31mred"],
    ids=["link", "markup", "ansi"],
)
def test_user_paths_are_printed_literally(tmp_path: Path, name: str) -> None:
    clinical = tmp_path / name
    clinical.mkdir(parents=True)  # a "/" in the name makes two folders; the path printed is the same
    code, output = cli("ingest", "--images", tmp_path, "--clinical", clinical, "--out", tmp_path / "w")
    assert "\x1b" not in output
    shown = name.replace("\x1b", "\\x1b")
    assert_refused(code, output, f"{tmp_path / shown}: no clinical file")


def test_an_internal_error_writes_a_log_and_prints_one_line(site: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "ingest").mkdir(parents=True)
    code = (
        "import sys, kneepain.ingest.pipeline as p\n"
        "def broken(*a, **k): raise RuntimeError('a bug')\n"
        "p.run_ingest = broken\n"
        "from kneepain.cli import app\n"
        f"sys.argv = ['kneepain', 'ingest', '--images', 'x', '--clinical', 'y', '--out', {str(work)!r}]\n"
        "app(prog_name='kneepain')\n"
    )
    status, output, _ = child(code=code)
    lines = [line for line in output.splitlines() if line.strip()]
    assert status == INTERNAL_ERROR_CODE and len(lines) == 1 and "Traceback" not in output, output
    logs = sorted((work / "logs").glob("error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in lines[0] and "please report it" in lines[0]
    assert "RuntimeError: a bug" in logs[0].read_text()
