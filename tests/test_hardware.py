"""Precision chosen from what the hardware offers: each path through mocked CPU flags and CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kneepain.hardware import PrecisionError, autocast_for, cpu_flags, resolve_precision

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx2 avx512_bf16 amx_bf16\n\n")
    assert {"avx2", "avx512_bf16", "amx_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (frozenset({"avx2", "fma"}), "fp32"),
        (frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16"),
        (frozenset({"avx2", "amx_bf16", "amx_tile"}), "bf16"),
    ],
)
def test_auto_picks_bf16_only_where_the_cpu_has_it(flags: frozenset[str], expected: str) -> None:
    choice = resolve_precision("auto", CPU, flags)
    assert choice.precision == expected
    assert choice.requested == "auto"
    assert ("neither" in choice.reason) == (expected == "fp32")


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_follows_compute_capability(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mock GPU")
    choice = resolve_precision("auto", CUDA)
    assert choice.precision == expected
    assert f"{capability[0]}.{capability[1]}" in choice.reason


def test_explicit_requests_are_kept_and_impossible_ones_refused() -> None:
    assert resolve_precision("fp32", CPU, frozenset({"amx_bf16"})).precision == "fp32"
    slow = resolve_precision("bf16", CPU, frozenset({"avx2"}))
    assert slow.precision == "bf16" and "emulated" in slow.reason
    with pytest.raises(PrecisionError, match="fp16 needs CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(PrecisionError, match="auto, fp32, bf16, fp16"):
        resolve_precision("half", CPU)


def test_autocast_for_runs_bf16_on_cpu_and_nothing_for_fp32() -> None:
    a = torch.ones(4, 4)
    with autocast_for("bf16", CPU):
        assert (a @ a).dtype == torch.bfloat16
    with autocast_for("fp32", CPU):
        assert (a @ a).dtype == torch.float32
