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
