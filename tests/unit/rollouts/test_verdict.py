"""The controller's pure decisions: breach, healthy or waiting; promotion steps' weights."""

from __future__ import annotations

import pytest

from gateway.config.rollouts import SloSettings
from gateway.rollouts.verdict import (
    Breach,
    Healthy,
    Waiting,
    judge,
    next_step,
    rollback_weights,
    share_percent,
    step_weights,
)
from gateway.rollouts.window import WindowStats

SLO = SloSettings(
    max_error_rate=0.02, max_ttft_p95_ratio=1.5, max_itl_p95_ratio=1.5, window_s=60, min_requests=50
)
STABLE = WindowStats(500, 1, 500, 0.100, 500, 0.010)


def stats(requests: int, failures: int = 0, ttft: float = 0.1, itl: float = 0.01) -> WindowStats:
    return WindowStats(requests, failures, requests, ttft, requests, itl)


def test_waits_for_min_requests() -> None:
    assert judge(stats(49, failures=49), STABLE, SLO) == Waiting(49)


def test_error_rate_breach() -> None:
    verdict = judge(stats(100, failures=25), STABLE, SLO)
    assert isinstance(verdict, Breach) and verdict.reason == "error_rate"
    assert "0.250" in verdict.detail and "25/100" in verdict.detail


def test_error_rate_at_the_limit_is_healthy() -> None:
    assert judge(stats(100, failures=2), STABLE, SLO) == Healthy()


def test_ttft_ratio_breach_and_limit() -> None:
    verdict = judge(stats(100, ttft=0.151), STABLE, SLO)
    assert isinstance(verdict, Breach) and verdict.reason == "ttft_p95"
    assert judge(stats(100, ttft=0.150), STABLE, SLO) == Healthy()


def test_itl_ratio_breach() -> None:
    verdict = judge(stats(100, itl=0.02), STABLE, SLO)
    assert isinstance(verdict, Breach) and verdict.reason == "itl_p95"


def test_latency_not_compared_without_enough_stable_samples() -> None:
    few_stable = WindowStats(10, 0, 10, 0.001, 10, 0.001)
    assert judge(stats(100, ttft=10.0, itl=10.0), few_stable, SLO) == Healthy()
    no_stable = WindowStats(0, 0, 0, None, 0, None)
    assert judge(stats(100, ttft=10.0), no_stable, SLO) == Healthy()


def test_latency_not_compared_without_enough_canary_samples() -> None:
    canary = WindowStats(100, 0, 10, 10.0, 0, None)  # non-streaming: few TTFTs
    assert judge(canary, STABLE, SLO) == Healthy()


def test_next_step() -> None:
    steps = (10.0, 25.0, 50.0, 100.0)
    assert next_step(steps, 0.0) == 10.0
    assert next_step(steps, 10.0) == 25.0
    assert next_step(steps, 10.0000000001) == 25.0
    assert next_step(steps, 30.0) == 50.0
    assert next_step(steps, 100.0) is None


def test_step_weights_keep_stable_proportions_and_total() -> None:
    weights = {"a": 60.0, "b": 30.0, "c": 10.0}
    result = step_weights(weights, weights, "c", 25.0)
    assert result == {"a": 50.0, "b": 25.0, "c": 25.0}
    assert share_percent(result, "c") == pytest.approx(25.0)
    assert step_weights(weights, weights, "c", 100.0) == {"a": 0.0, "b": 0.0, "c": 100.0}


def test_step_weights_keep_a_rolled_back_variant_at_zero() -> None:
    weights = {"stable": 90.0, "old-canary": 0.0, "canary": 10.0}
    result = step_weights(weights, {"stable": 80, "old-canary": 10, "canary": 10}, "canary", 50.0)
    assert result == {"stable": 50.0, "old-canary": 0.0, "canary": 50.0}


def test_step_weights_when_others_are_all_zero_use_the_configured_ones() -> None:
    weights = {"stable": 0.0, "canary": 100.0}
    result = step_weights(weights, {"stable": 9.0, "canary": 1.0}, "canary", 50.0)
    assert result == {"stable": 50.0, "canary": 50.0}


def test_rollback_weights() -> None:
    assert rollback_weights({"s": 90.0, "c": 10.0}, {"s": 90.0}, "c") == {"s": 90.0, "c": 0.0}
    # A canary promoted to 100% then rolled back: the stable variant gets its weight back.
    assert rollback_weights({"s": 0.0, "c": 100.0}, {"s": 90.0}, "c") == {"s": 90.0, "c": 0.0}
    assert rollback_weights({"s": 0.0, "c": 100.0}, {"s": 0.0}, "c") == {"s": 1.0, "c": 0.0}
