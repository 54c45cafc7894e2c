"""This machine's measured matrix-multiply peak, the yardstick for achieved FLOP/s."""

from __future__ import annotations

import time

import torch


def matmul_peak_flops(
    dtype: torch.dtype, device: str = "cpu", size: int = 1024, seconds: float = 1.0
) -> float:
    """Best FLOP/s of a square matmul in ``dtype`` over about ``seconds`` of repeats."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    flops_per_call = 2.0 * size**3
    torch.matmul(a, b)  # warm-up: first call pays for kernel selection
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, flops_per_call / (time.perf_counter() - start))
    return best


def forward_backward_flops(model: torch.nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward + backward pass of ``model`` on ``example``, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        output = model(example)
        output.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())
