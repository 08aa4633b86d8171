"""Wall-clock timing shared by the `merg-jax bench` targets: medians for reports, the best call for peaks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def call_times(fn: Callable[[], object], repeats: int, *, warmup: int = 0) -> list[float]:
    """Seconds of each of `repeats` calls of `fn` (which must block until its work is done), after `warmup`
    untimed calls (compilation, first-call caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn: Callable[[], object], repeats: int, *, warmup: int = 0) -> float:
    return statistics.median(call_times(fn, repeats, warmup=warmup))


def best_time(fn: Callable[[], object], repeats: int, *, warmup: int = 1) -> float:
    return min(call_times(fn, repeats, warmup=warmup))
