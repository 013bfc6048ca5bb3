"""Tests for mpcourse.timing: the package's one clock (chapters 09 and 11)."""

from __future__ import annotations

import pytest
import torch

from mpcourse import bench, inference, timing


def test_one_clock_serves_inference_and_bench():
    assert inference.compare_latency is timing.compare_latency
    assert inference.Latency is timing.Latency
    assert bench.autorange is timing.autorange
    assert not hasattr(bench, "_median_seconds") and not hasattr(bench, "_timing")


def test_compare_latency_orders_a_slow_and_a_fast_function():
    x, threads = torch.randn(64, 64), torch.get_num_threads()
    fast, slow = (lambda: x + 1), (lambda: [x @ x for _ in range(20)])
    lat = timing.compare_latency({"fast": fast, "slow": slow}, repeats=5, threads=1)
    assert lat["fast"].median < lat["slow"].median
    for r in lat.values():
        assert r.q1 <= r.median <= r.q3 and r.iqr >= 0 and r.repeats == 5 and r.threads == 1
        assert str(r).endswith("5 runs)")
    assert torch.get_num_threads() == threads  # restored after the measurement
    with pytest.raises(ValueError, match="repeats must be an int >= 2"):
        timing.measure_latency(fast, repeats=1)


def test_autorange_reports_median_inside_its_quartiles():
    x = torch.randn(32, 32)
    median, (q1, q3) = timing.autorange(lambda: x @ x, min_run_time=0.01)
    assert 0 < q1 <= median <= q3


def test_all_threads_is_a_positive_int():
    assert isinstance(timing.all_threads(), int) and timing.all_threads() >= 1
