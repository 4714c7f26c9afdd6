"""Routing policies choose from snapshots only."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.engine_pool import EnginePool
from gateway.routing import EndpointView, LeastOutstanding, RoundRobin, build_policy


def _views(*loads: int) -> tuple[EndpointView, ...]:
    return tuple(EndpointView(f"http://e{i}", load, True) for i, load in enumerate(loads))


def test_least_outstanding_picks_the_idlest() -> None:
    policy = LeastOutstanding()
    assert policy.choose(_views(3, 1, 2)).url == "http://e1"


def test_least_outstanding_rotates_among_ties() -> None:
    policy = LeastOutstanding()
    picks = Counter(policy.choose(_views(0, 0, 5)).url for _ in range(10))
    assert picks == {"http://e0": 5, "http://e1": 5}


def test_round_robin_cycles() -> None:
    policy = RoundRobin()
    assert [policy.choose(_views(9, 0, 0)).url for _ in range(4)] == [
        "http://e0", "http://e1", "http://e2", "http://e0",
    ]  # fmt: skip


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown routing policy"):
        build_policy("random")


def test_pool_snapshot_prefers_healthy_and_tracks_in_flight() -> None:
    pool = EnginePool({"m": ["http://a", "http://b"]})
    pool.set_health("http://a", False)
    assert [v.url for v in pool.snapshot("m")] == ["http://b"]
    pool.set_health("http://b", False)
    assert [v.url for v in pool.snapshot("m")] == ["http://a", "http://b"]
    pool.acquire("http://b")
    assert [v.in_flight for v in pool.snapshot("m")] == [0, 1]
    pool.release("http://b")
    pool.release("http://b")
    assert [v.in_flight for v in pool.snapshot("m")] == [0, 0]
    assert pool.snapshot("m", exclude=["http://a"])[0].url == "http://b"


def test_pool_replacing_endpoints_keeps_state_of_survivors() -> None:
    pool = EnginePool({"m": ["http://a", "http://b"]})
    pool.acquire("http://a")
    pool.set_endpoints("m", ["http://a", "http://c"])
    assert {v.url: v.in_flight for v in pool.snapshot("m")} == {"http://a": 1, "http://c": 0}
    assert set(pool.urls()) == {"http://a", "http://c"}


def test_round_robin_spreads_first_attempts_when_retries_are_allowed() -> None:
    """A request that succeeds first time consults the policy once (no skipped turns)."""
    from gateway.auth import OpenAccess
    from gateway.metrics import GatewayMetrics
    from gateway.service import CompletionService
    from gateway.settings import UpstreamSettings
    from gateway.upstream import UpstreamClient

    pool = EnginePool({"m": ["http://a", "http://b"]})
    upstream = UpstreamClient(UpstreamSettings())
    service = CompletionService(
        {}, pool, RoundRobin(), upstream, GatewayMetrics(), retries=1, authenticator=OpenAccess()
    )
    firsts = [next(service._candidates("m")) for _ in range(4)]
    assert firsts == ["http://a", "http://b", "http://a", "http://b"]
    assert list(service._candidates("m")) == ["http://a", "http://b"]  # then the other one
