"""This machine's measured matrix-multiply peak, the yardstick for achieved FLOP/s."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import torch

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak_flops(
    dtype: torch.dtype, device: str = "cpu", size: int | None = None, seconds: float = 1.0
) -> float:
    """Best FLOP/s of a square matmul in ``dtype`` over about ``seconds`` of repeats.

    ``size`` defaults to 1024 on a CPU and 8192 on a GPU (large enough to reach its peak).
    """
    size = size or (1024 if device == "cpu" else 8192)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    flops_per_call = 2.0 * size**3
    torch.matmul(a, b)  # warm-up: first call pays for kernel selection
    if device != "cpu":
        torch.cuda.synchronize()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, flops_per_call / (time.perf_counter() - start))
    return best


@contextlib.contextmanager
def _tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def peak_flops(precisions: Iterable[str], device: torch.device, seconds: float = 1.0) -> dict[str, float]:
    """Matmul peak FLOP/s per precision name (fp32, tf32, bf16, fp16) on ``device``.

    ``tf32`` is fp32 storage with TensorFloat-32 matmuls, which cuDNN uses for fp32 convolutions by
    default on a GPU; on a CPU it is not measured.
    """
    peaks: dict[str, float] = {}
    for name in dict.fromkeys(precisions):
        if name == "tf32" and device.type != "cuda":
            continue
        with _tf32(name == "tf32") if device.type == "cuda" else contextlib.nullcontext():
            peaks[name] = matmul_peak_flops(DTYPES[name], device.type, seconds=seconds)
    return peaks


def forward_backward_flops(model: torch.nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward + backward pass of ``model`` on ``example``, counted by torch.

    Counts matmuls and convolutions (what FlopCounterMode knows); batch norm, ReLU and pooling
    are left out, as is the optimizer step.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        output = model(example)
        output.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
