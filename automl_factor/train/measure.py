"""What a deployed model costs: parameters, FLOPs and latency, measured on its collapsed form.

FLOPs come from ``torch.utils.flop_counter`` and latency from ``torch.utils.benchmark`` (median of
adaptive runs, fixed threads and batch size), so the numbers are PyTorch's own, not estimates.
``paired_latency`` times a model and its dense reference alternately, round after round, because
a machine's speed drifts (other processes, clocks, caches) far more between moments than within
one: the ratio of neighbouring timings is what stays put, and its spread over rounds says how much.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..factorization import collapse, count_params

__all__ = ["count_params", "count_flops", "latency_ms", "paired_latency", "PairedLatency"]


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



@dataclass(frozen=True)
class PairedLatency:
    """Candidate vs dense latency. ``ratio`` is the median of the per-round ratios, ``spread``
    their relative half inter-quartile range (0.05: the middle half of rounds within ±5%)."""

    ratio: float
    spread: float
    ms: float
    dense_ms: float
    rounds: int


@torch.no_grad()
def paired_latency(model: nn.Module, dense: nn.Module, input_shape: tuple[int, ...], *, rounds: int = 5,
                   threads: int = 1, min_run_time: float = 0.02, device: str | torch.device | None = None
                   ) -> PairedLatency:
    """Latency of ``model`` relative to ``dense`` (both collapsed, eval mode), timed alternately.

    Each round times both models back to back with ``torch.utils.benchmark`` (which synchronizes
    CUDA) for about ``min_run_time`` seconds each, the order flipping every round so neither always
    runs on a warmer machine. ``device`` defaults to where ``model`` lives. Example::

        paired_latency(fmodel, dense, (1, 3, 32, 32), rounds=5).ratio   # 0.42: 2.4x faster than dense
    """
    from torch.utils import benchmark  # imported here: at import time it probes for a CUDA toolkit

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    models = [collapse(m).to(device).eval() for m in (model, dense)]
    x = torch.randn(input_shape, device=device)
    timers = [benchmark.Timer(stmt="model(x)", globals={"model": m, "x": x}, num_threads=threads) for m in models]
    # One block of calls per model per round, sized once so a block lasts about min_run_time
    # (blocked_autorange would re-calibrate every round, several times the cost).
    numbers = []
    for timer in timers:
        timer.timeit(3)  # warm-up: allocator, kernels, lazy init
        single = max(timer.timeit(5).mean, 1e-7)
        numbers.append(max(1, int(min_run_time / single)))
    times: list[list[float]] = [[], []]
    for round_index in range(rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            times[which].append(timers[which].timeit(numbers[which]).mean)
    ratios = [a / b for a, b in zip(*times)]
    ratio = statistics.median(ratios)
    if len(ratios) >= 4:
        quartiles = statistics.quantiles(ratios, n=4)
        spread = (quartiles[2] - quartiles[0]) / 2 / ratio
    else:
        spread = (max(ratios) - min(ratios)) / 2 / ratio
    return PairedLatency(ratio=ratio, spread=spread, ms=statistics.median(times[0]) * 1e3,
                         dense_ms=statistics.median(times[1]) * 1e3, rounds=rounds)
