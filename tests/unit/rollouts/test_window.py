"""Sliding windows: counts and p95s over the last window_s seconds, bounded memory,
old buckets aging out; observations carry explicit times."""

from __future__ import annotations

import math

import pytest

from gateway.rollouts.window import (
    BINS,
    BUCKETS_PER_WINDOW,
    RolloutWindows,
    VariantWindow,
    bin_of,
    bin_value,
    merged_stats,
)


def test_counts_and_error_rate() -> None:
    window = VariantWindow(10.0)
    for i in range(40):
        window.observe(1.0 + i * 0.01, failed=i % 4 == 0, ttft_s=0.1, itl_s=0.01)
    stats = window.stats(2.0)
    assert (stats.requests, stats.failures) == (40, 10)
    assert stats.error_rate == pytest.approx(0.25)
    assert stats.ttft_samples == stats.itl_samples == 40


def test_p95_is_within_the_bin_precision() -> None:
    window = VariantWindow(60.0)
    for i in range(1, 1001):  # 1..1000 ms
        window.observe(5.0, failed=False, ttft_s=i / 1000, itl_s=None)
    stats = window.stats(5.0)
    assert stats.ttft_p95_s == pytest.approx(0.95, rel=0.03)
    assert stats.itl_p95_s is None and stats.itl_samples == 0


def test_old_observations_age_out_and_memory_stays_bounded() -> None:
    window = VariantWindow(10.0)
    for i in range(10_000):
        window.observe(i * 0.001, failed=True, ttft_s=5.0, itl_s=None)  # 0..10 s
    assert window.stats(10.0).requests > 9_000
    for i in range(100):
        window.observe(25.0 + i * 0.01, failed=False, ttft_s=0.01, itl_s=None)
    stats = window.stats(26.0)
    assert (stats.requests, stats.failures) == (100, 0)
    assert stats.ttft_p95_s == pytest.approx(0.01, rel=0.03)
    assert len(window._ring) == BUCKETS_PER_WINDOW
    assert window.stats(100.0).requests == 0


def test_partial_expiry_keeps_the_recent_part() -> None:
    window = VariantWindow(10.0)
    window.observe(1.0, failed=True, ttft_s=None, itl_s=None)
    window.observe(8.0, failed=False, ttft_s=None, itl_s=None)
    assert window.stats(9.0).requests == 2
    stats = window.stats(12.0)  # 1.0 is out of (2, 12], 8.0 still in
    assert (stats.requests, stats.failures) == (1, 0)


def test_merged_p95_covers_both_windows() -> None:
    fast, slow = VariantWindow(10.0), VariantWindow(10.0)
    for _ in range(50):
        fast.observe(1.0, failed=False, ttft_s=0.01, itl_s=None)
        slow.observe(1.0, failed=False, ttft_s=1.0, itl_s=None)
    stats = merged_stats([fast, slow], 1.0)
    assert stats.requests == 100
    assert stats.ttft_p95_s == pytest.approx(1.0, rel=0.03)


def test_clear_forgets_everything() -> None:
    window = VariantWindow(10.0)
    window.observe(1.0, failed=True, ttft_s=0.5, itl_s=0.5)
    window.clear()
    stats = window.stats(1.0)
    assert (stats.requests, stats.failures, stats.ttft_p95_s) == (0, 0, None)


@pytest.mark.parametrize("value", [-1.0, 0.0, math.nan, math.inf, 1e12, 1e-9])
def test_hostile_latencies_fall_into_the_end_bins(value: float) -> None:
    assert 0 <= bin_of(value) < BINS


def test_bins_are_monotonic() -> None:
    values = [bin_value(i) for i in range(BINS)]
    assert values == sorted(values)
    assert bin_value(bin_of(0.25)) == pytest.approx(0.25, rel=0.03)


def test_rollout_windows_ignore_unknown_names() -> None:
    windows = RolloutWindows({"r": 10.0}, {"r": ["a", "b"]})
    windows.observe("r", "a", failed=False, ttft_s=None, itl_s=None, now=1.0)
    windows.observe("r", "nope", failed=True, ttft_s=None, itl_s=None, now=1.0)
    windows.observe("nope", "a", failed=True, ttft_s=None, itl_s=None, now=1.0)
    assert windows.stats("r", ["a", "b", "nope"], now=1.0).requests == 1
    assert windows.stats("nope", ["a"], now=1.0).requests == 0
