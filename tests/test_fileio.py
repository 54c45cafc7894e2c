"""Atomic writes: a failure leaves the previous file intact and no temporary files behind;
success leaves files with the modes a plain write would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from kneepain.fileio import atomic_dir, atomic_path, write_csv, write_json


def test_failed_write_keeps_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    with pytest.raises(ValueError), atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
        raise ValueError("bad input")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=lambda umask: f"umask{umask:03o}")
def test_outputs_get_the_usual_modes_not_owner_only(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "run.json", {"a": 1})
        write_csv(tmp_path / "table.csv", pd.DataFrame({"subject_id": ["9000001"]}))
        with atomic_dir(tmp_path / "bundle") as tmp:
            (tmp / "model.json").write_text("{}")
            (tmp / "model.safetensors").write_bytes(b"")
            (tmp / "model.safetensors").chmod(0o600)  # as libraries writing via their own temp files do
        (tmp_path / "plain.txt").write_text("made by open()")
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    expected_file = 0o666 & ~umask
    expected_dir = 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected_file
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == expected_dir
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == expected_file
    assert stat.S_IMODE((tmp_path / "table.csv").stat().st_mode) == expected_file
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == expected_dir
    assert stat.S_IMODE((tmp_path / "bundle" / "model.json").stat().st_mode) == expected_file
    assert stat.S_IMODE((tmp_path / "bundle" / "model.safetensors").stat().st_mode) == expected_file


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kneepain.fileio import owner_tag, remove_stale_temporaries

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host, dead_pid = owner_tag().split("~")[0], int(dead.stdout)
    (tmp_path / "parts").mkdir()
    stale_file = tmp_path / "parts" / f".cache.npy.{host}~{dead_pid}.abcd1234.tmp"
    stale_file.write_bytes(b"half a cache")
    stale_dir = tmp_path / f".ingest.{host}~{dead_pid}.x1y2z3w4.tmp"
    stale_dir.mkdir()
    (stale_dir / "series.csv").write_text("half")
    mine = tmp_path / f".index.csv.{owner_tag()}.q1w2e3r4.tmp"  # this process: still writing
    mine.write_text("in progress")
    other_host = tmp_path / f".qc.csv.elsewhere~{dead_pid}.q1w2e3r4.tmp"  # another node's shard
    other_host.write_text("in progress")
    removed = remove_stale_temporaries(tmp_path, recursive=True)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert mine.exists() and other_host.exists()


def test_a_swap_cut_between_its_renames_gets_the_old_folder_back(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kneepain.fileio import owner_tag, remove_stale_temporaries

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    tag = f"{owner_tag().split('~')[0]}~{int(dead.stdout)}"
    old, new = tmp_path / f".ingest.{tag}.old", tmp_path / f".ingest.{tag}.k9k9k9k9.tmp"
    old.mkdir()
    (old / "series.csv").write_text("previous output")
    new.mkdir()
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ingest"]
    assert (tmp_path / "ingest" / "series.csv").read_text() == "previous output"


def test_temporaries_are_named_after_their_writer(tmp_path: Path) -> None:
    from kneepain.fileio import owner_tag

    with atomic_path(tmp_path / "a.csv") as tmp:
        assert tmp.name.startswith(f".a.csv.{owner_tag()}.") and tmp.name.endswith(".tmp")


def test_cleaning_a_users_folder_touches_only_the_named_targets(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kneepain.fileio import owner_tag, remove_stale_temporaries

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    tag = f"{owner_tag().split('~')[0]}~{int(dead.stdout)}"
    ours, theirs = tmp_path / f".prediction.{tag}.a1b2c3d4.tmp", tmp_path / f".notes.{tag}.a1b2c3d4.tmp"
    ours.mkdir()
    theirs.write_text("not ours to judge")
    assert remove_stale_temporaries(tmp_path, names={"prediction"}) == [ours]
    assert theirs.exists()
