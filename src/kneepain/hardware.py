"""What this machine offers for training and inference: native bf16, cores, CUDA.

Machines differ between sessions (a 2-core AVX2 laptop, a CPU with AVX512-BF16 or AMX, a GPU), so
precision is chosen from what the hardware reports, never hard-coded: ``auto`` is bf16 where the
device computes it natively and fp32 otherwise (emulated bf16 on an AVX2 CPU is ~10x slower than
fp32, docs/experiments.md). torch is imported inside the functions: the preprocessing children
import modules that import this one and must stay light.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp16")
REQUESTS = ("auto", *PRECISIONS)
# CPU flags (as /proc/cpuinfo names them) that mean bf16 matrix arithmetic in hardware.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_BF16_CUDA_CAPABILITY = (8, 0)  # Ampere and later


class PrecisionError(ValueError):
    """A precision that is unknown, or that this device cannot run."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a stage runs in, the one asked for, and why (printed and recorded)."""

    precision: str
    requested: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"precision": self.precision, "requested": self.requested, "reason": self.reason}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where the OS does not list them, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware, and the evidence in a few words.

    ``flags`` replaces the CPU's own flags (tests pass a set to exercise each path).
    """
    import torch

    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = torch.cuda.get_device_name(device)
        native = (major, minor) >= MIN_BF16_CUDA_CAPABILITY
        return native, f"{name}, compute capability {major}.{minor} ({'>=' if native else '<'} 8.0)"
    found = sorted((cpu_flags() if flags is None else flags) & set(NATIVE_BF16_CPU_FLAGS))
    if found:
        return True, f"CPU has {' and '.join(found)}"
    return False, f"CPU has neither {' nor '.join(NATIVE_BF16_CPU_FLAGS)} (bf16 would be emulated)"


def resolve_precision(
    requested: str, device: torch.device, flags: frozenset[str] | None = None
) -> PrecisionChoice:
    """The precision to run in: ``auto`` picks bf16 where native, else fp32; others are checked."""
    if requested not in REQUESTS:
        raise PrecisionError(f"precision must be one of {', '.join(REQUESTS)}, got {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise PrecisionError("precision fp16 needs CUDA (GradScaler); use bf16 or auto on a CPU")
    native, evidence = native_bf16(device, flags)
    if requested == "auto":
        chosen = "bf16" if native else "fp32"
        return PrecisionChoice(chosen, requested, f"auto: {evidence}")
    if requested == "bf16" and not native:
        return PrecisionChoice("bf16", requested, f"asked for; slow here: {evidence}")
    return PrecisionChoice(requested, requested, "asked for")


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (nothing for fp32)."""
    import torch

    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise PrecisionError("precision fp16 needs CUDA (GradScaler); use bf16 or auto on a CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
