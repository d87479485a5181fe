"""What a deployed model costs: parameters, FLOPs and latency, measured on its collapsed form.

FLOPs come from ``torch.utils.flop_counter`` and latency from ``torch.utils.benchmark`` (median of
adaptive runs, fixed threads and batch size), so the numbers are PyTorch's own, not estimates.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..factorization import collapse, count_params

__all__ = ["count_params", "count_flops", "latency_ms"]


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on an input of ``input_shape`` (batch included), as counted by
    ``torch.utils.flop_counter`` (a multiply-add counts 2)."""
    device = next(model.parameters()).device
    model = collapse(model).eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops()


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], *, threads: int = 1,
               min_run_time: float = 0.3, channels_last: bool = False) -> float:
    """Median inference latency in milliseconds of the collapsed model for one input batch."""
    from torch.utils import benchmark  # imported here: at import time it probes for a CUDA toolkit

    device = next(model.parameters()).device
    model = collapse(model).eval()
    x = torch.randn(input_shape, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=threads)
    return timer.adaptive_autorange(min_run_time=min_run_time).median * 1e3
