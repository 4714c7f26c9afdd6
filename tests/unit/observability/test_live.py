"""LiveStats: per-model figures over the last minutes, from explicit clock times."""

from __future__ import annotations

import pytest

from gateway.observability.live import (
    BOUNDS,
    BUCKET_GROWTH,
    HORIZON_S,
    MAX_MODELS,
    OTHER_MODELS,
    QUANTILE_SLOT_S,
    RATE_WINDOW_S,
    LiveStats,
    ModelFigures,
    quantile,
)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def figures(stats: LiveStats, model: str = "m", series_s: int = 120) -> ModelFigures:
    return next(f for f in stats.summary(series_s) if f.model == model)


def test_requests_per_second_over_the_rate_window_and_the_series() -> None:
    clock = Clock()
    stats = LiveStats(clock)
    for _ in range(30):
        stats.count("m", 200)
    clock.now += 1
    for _ in range(10):
        stats.count("m", 200)
    f = figures(stats, series_s=60)
    assert f.requests == 40
    assert f.requests_per_s == pytest.approx(40 / RATE_WINDOW_S)
    assert len(f.rate_series) == 60
    assert f.rate_series[-2:] == (30, 10)
    assert sum(f.rate_series) == 40


def test_errors_are_5xx_and_broken_streams_not_4xx() -> None:
    stats = LiveStats(Clock())
    for status in (200, 200, 400, 429, 500, 503):
        stats.count("m", status)
    stats.stream("m", 0.1, 0.01, broke=True)  # a 200 whose stream broke
    assert figures(stats).error_rate == pytest.approx(3 / 6)


def test_figures_older_than_the_horizon_are_forgotten() -> None:
    clock = Clock()
    stats = LiveStats(clock)
    stats.count("m", 500)
    stats.cache("m", hit=True)
    stats.stream("m", 0.2, 0.02, broke=False)
    clock.now += HORIZON_S + QUANTILE_SLOT_S
    stats.count("m", 200)  # the ring's slot is reused for a later second
    f = figures(stats)
    assert f.requests == 1
    assert f.error_rate == 0
    assert f.cache_hit_ratio is None
    assert f.ttft_p50_s is None and f.itl_p95_s is None


def test_a_slot_reused_after_exactly_one_horizon_starts_empty() -> None:
    clock = Clock()
    stats = LiveStats(clock)
    for _ in range(5):
        stats.count("m", 200)
    clock.now += HORIZON_S  # same ring index, another second
    stats.count("m", 200)
    assert figures(stats).requests == 1


def test_percentiles_are_within_one_bucket() -> None:
    clock = Clock()
    stats = LiveStats(clock)
    for i in range(1, 101):  # TTFT 10 ms .. 1 s, ITL a tenth of it
        stats.stream("m", i / 100, i / 1000, broke=False)
        clock.now += 0.5  # spread over several histogram slots
    f = figures(stats)
    assert f.ttft_p50_s is not None and f.ttft_p95_s is not None
    assert f.itl_p50_s is not None and f.itl_p95_s is not None
    for measured, true in ((f.ttft_p50_s, 0.5), (f.ttft_p95_s, 0.95)):
        assert true / BUCKET_GROWTH <= measured <= true * BUCKET_GROWTH
    for measured, true in ((f.itl_p50_s, 0.05), (f.itl_p95_s, 0.095)):
        assert true / BUCKET_GROWTH <= measured <= true * BUCKET_GROWTH


def test_unknown_timings_count_no_sample() -> None:
    stats = LiveStats(Clock())
    stats.stream("m", None, None, broke=False)
    stats.stream("m", 0.25, None, broke=False)
    f = figures(stats)
    assert f.ttft_p50_s is not None and f.itl_p50_s is None


def test_cache_hit_ratio_counts_lookups_only() -> None:
    stats = LiveStats(Clock())
    for hit in (True, True, True, False):
        stats.cache("m", hit)
    assert figures(stats).cache_hit_ratio == pytest.approx(0.75)


def test_ttft_series_has_one_point_per_histogram_slot() -> None:
    clock = Clock(10_000.0)
    stats = LiveStats(clock)
    stats.stream("m", 0.1, None, broke=False)
    clock.now += QUANTILE_SLOT_S
    stats.stream("m", 1.0, None, broke=False)
    series = figures(stats, series_s=60).ttft_p95_series
    assert len(series) == 60 // QUANTILE_SLOT_S
    assert series[:-2] == (None,) * (len(series) - 2)
    earlier, latest = series[-2], series[-1]
    assert earlier is not None and latest is not None
    assert earlier == pytest.approx(0.1, rel=BUCKET_GROWTH - 1)
    assert latest == pytest.approx(1.0, rel=BUCKET_GROWTH - 1)


def test_models_beyond_the_cap_share_one_row() -> None:
    stats = LiveStats(Clock())
    for i in range(MAX_MODELS + 5):
        stats.count(f"model-{i}", 200)
    names = stats.models()
    assert len(names) == MAX_MODELS + 1
    assert OTHER_MODELS in names
    assert figures(stats, OTHER_MODELS).requests == 5


def test_quantile_of_an_empty_histogram_is_none_and_extremes_are_clamped() -> None:
    buckets = len(BOUNDS) + 1
    assert quantile([0] * buckets, 0.5) is None
    overflow = [0] * buckets
    overflow[-1] = 3
    assert quantile(overflow, 0.5) == BOUNDS[-1]
    tiny = [0] * buckets
    tiny[0] = 1
    assert quantile(tiny, 0.99) == BOUNDS[0]
