"""Wall-clock timing shared by the `merg-jax bench` targets: medians for reports, the best call for peaks, and
interleaved medians for side-by-side ratios."""

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


def interleaved_median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in `repeats` rounds that call every function once, in turn.

    For a ratio of two sides on a shared machine: a slow spell of the machine lands on both sides of the rounds
    it covers instead of on whichever side happened to be timed then (four runs of the tiny LLM's training, timed
    side after side on this project's 2-core VM: the peer's tokens/s 12,061-16,960; the ratio 1.10 and 0.92 for one
    version of ours, 1.09 and 1.29 for another).
    Let each function run a block of several steps: switching sides costs the first step of a block (a thread
    pool waking cold, the other side's threads still spinning: why `bench encoders` and `bench speech`, which
    alternated single calls, time each side in one block), and both sides pay it.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
