"""Timing steps: CUDA events on the GPU, perf_counter on the CPU, interleaved across implementations."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

Step = Callable[[], object]


def time_once(step: Step, device: torch.device) -> float:
    """Seconds one call of ``step`` takes, measured on the device's own clock."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def interleaved(steps: dict[str, Step], device: torch.device, warmup: int, iters: int) -> dict[str, list[float]]:
    """Time each named step ``iters`` times, taking turns, after ``warmup`` untimed calls each.

    Rounds rotate which implementation goes first, so a slow-down on a shared machine
    (another process, clock changes) falls on all of them alike instead of on one.
    """
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(iters):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(time_once(steps[name], device))
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float]) -> float:
    """Relative interquartile range: how noisy a measurement was (0.05 = 5 %)."""
    if len(xs) < 4:
        return (max(xs) - min(xs)) / statistics.median(xs) if xs else 0.0
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)
