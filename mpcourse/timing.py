"""The package's clock: per-call seconds as a median with its interquartile range.

A timing on a shared machine is a distribution, not a number: other processes,
frequency scaling and caches move single runs. So every measurement here runs
the function in *blocks*, takes ``block_time / calls`` per block, and reports
the median $m$ and the quartiles $(q_1, q_3)$ of those per-call times; the
spread is the interquartile range $q_3 - q_1$. Two clocks:

* :func:`compare_latency` / :func:`measure_latency`: ``time.perf_counter`` around
  ``repeats`` blocks of ``number`` calls, the device synchronised before and
  after each block, candidates *interleaved* (one block of each per round), so a
  busy moment of the machine is spread over all of them (chapter 11);
* :func:`autorange`: ``torch.utils.benchmark.Timer.blocked_autorange``, which
  picks the block size itself and runs until ``min_run_time`` (chapter 09).

``device.autocast_speed`` keeps its own ``Timer`` so that :mod:`mpcourse.device`
imports nothing from the package.

Taught in course/09_speed_and_memory.ipynb and course/11_inference.ipynb.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .device import synchronize
from .validate import int_at_least

__all__ = ["Latency", "all_threads", "measure_latency", "compare_latency", "autorange"]


@dataclass(frozen=True)
class Latency:
    """Per-call seconds over ``repeats`` timed blocks: median and interquartile range.

    Taught in course/11_inference.ipynb.
    """

    median: float
    q1: float
    q3: float
    repeats: int
    threads: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def __str__(self) -> str:
        return f"{self.median * 1e3:.3f} ms (IQR {self.iqr * 1e3:.3f} ms, {self.repeats} runs)"


def all_threads() -> int:
    """The number of CPU cores this process may use (its affinity), at least 1.

    Taught in course/11_inference.ipynb.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[int]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def measure_latency(
    fn: Callable[[], Any],
    *,
    repeats: int = 20,
    number: int = 1,
    warmup: int = 3,
    threads: int | None = None,
    device: torch.device | str = "cpu",
) -> Latency:
    """Median and quartiles of the time of ``fn()``: ``warmup`` calls, then ``repeats`` blocks.

    Each block times ``number`` calls (synchronising ``device`` before and
    after) and counts ``block_time / number``. ``threads`` sets
    ``torch.set_num_threads`` for the measurement (restored afterwards).
    Runs under ``torch.inference_mode()``.

    Taught in course/11_inference.ipynb.
    """
    return compare_latency(
        {"fn": fn}, repeats=repeats, number=number, warmup=warmup, threads=threads, device=device
    )["fn"]


def compare_latency(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int = 20,
    number: int = 1,
    warmup: int = 3,
    threads: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Latency]:
    """:func:`measure_latency` for several functions, interleaved: one block of each per round.

    On a shared machine the load changes over time; interleaving spreads
    those changes over all candidates instead of penalising whichever ran
    during a busy moment.

    Taught in course/11_inference.ipynb.
    """
    for name, value, low in (("repeats", repeats, 2), ("number", number, 1), ("warmup", warmup, 0)):
        int_at_least(value, name, low)
    times: dict[str, list[float]] = {key: [] for key in fns}
    with _threads(threads) as used, torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):
            for key, fn in fns.items():
                synchronize(device)
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                synchronize(device)
                times[key].append((time.perf_counter() - start) / number)
    out = {}
    for key, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        out[key] = Latency(statistics.median(ts), q1, q3, repeats, used)
    return out


def autorange(
    fn: Callable[[], Any], min_run_time: float, warmup: int = 2
) -> tuple[float, tuple[float, float]]:
    """Median and (25th, 75th) percentiles, in seconds per call, of the blocks that
    ``torch.utils.benchmark.Timer.blocked_autorange`` timed (their difference is the
    IQR it reports), after ``warmup`` calls, with this process's thread count.

    Taught in course/09_speed_and_memory.ipynb.
    """
    from torch.utils import benchmark  # imported here: it pulls in cpp_extension (slow)

    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    q1, q3 = torch.tensor(measurement.times, dtype=torch.float64).quantile(
        torch.tensor([0.25, 0.75], dtype=torch.float64)
    )
    return float(measurement.median), (float(q1), float(q3))
