"""Routing policies choose from snapshots only."""

from __future__ import annotations

from collections import Counter

from gateway.pool.engine_pool import EnginePool
from gateway.routing.policies import (
    EndpointView,
    HashRing,
    LeastOutstanding,
    PrefixAffinity,
    RoundRobin,
    RoutingTable,
)


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


def test_routing_table_per_model_and_default() -> None:
    from gateway.config.sections import RoutingSettings

    table = RoutingTable(
        RoutingSettings(), {"chat": RoutingSettings(policy="prefix_affinity", prefix_chars=64)}
    )
    assert isinstance(table.for_model("chat")[0], PrefixAffinity)
    assert table.for_model("chat")[1] == 64
    assert isinstance(table.for_model("other")[0], LeastOutstanding)


def test_ring_maps_a_key_to_one_engine_and_moves_few_keys_on_change() -> None:
    urls = [f"http://e{i}" for i in range(4)]
    keys = [f"conversation-{i}".encode() for i in range(2000)]
    before = HashRing(urls)
    assert all(before.owner(k) == HashRing(list(reversed(urls))).owner(k) for k in keys[:50])
    owners = [before.owner(k) for k in keys]
    assert set(owners) == set(urls)
    assert max(owners.count(u) for u in urls) < 2 * len(keys) / len(urls)
    after = HashRing([*urls, "http://e4"])
    moved = sum(before.owner(k) != after.owner(k) for k in keys)
    assert moved < len(keys) * 0.35  # ~1/5 expected; a modulo hash would move ~4/5
    assert all(after.owner(k) == "http://e4" for k in keys if before.owner(k) != after.owner(k))


def test_prefix_affinity_is_sticky_until_the_imbalance_guard() -> None:
    policy = PrefixAffinity(max_imbalance=2)
    views = _views(0, 0, 0)
    first = policy.choose(views, b"p:You are a helpful assistant")
    assert all(policy.choose(views, b"p:You are a helpful assistant") == first for _ in range(5))
    busy = tuple(EndpointView(v.url, 3 if v.url == first.url else 0, True) for v in views)
    assert policy.choose(busy, b"p:You are a helpful assistant").url != first.url
    tolerable = tuple(EndpointView(v.url, 2 if v.url == first.url else 0, True) for v in views)
    assert policy.choose(tolerable, b"p:You are a helpful assistant").url == first.url
    assert policy.choose(views, None).url in {v.url for v in views}


def test_affinity_key_prefers_session_then_user_then_prompt_prefix() -> None:
    from gateway.pipeline.parsing import affinity_key

    body = {"messages": [{"role": "system", "content": "x" * 50}, {"role": "user", "content": "y"}]}
    assert affinity_key(body, "abc", 10) == b"s:abc"
    assert affinity_key(body | {"user": "u1"}, None, 10) == b"u:u1"
    assert affinity_key(body, None, 10) == b"p:" + b"x" * 10
    assert affinity_key({"prompt": ["hello world", "x"]}, None, 5) == b"p:hello"
    next_turn = {"messages": [*body["messages"], {"role": "assistant", "content": "z"}]}
    assert affinity_key(next_turn, None, 100) == affinity_key(body, None, 100)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}]}]}
    assert affinity_key(parts, None, 100) == b"p:abc"


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
    from gateway.config.sections import RoutingSettings
    from gateway.config.upstream import UpstreamSettings
    from gateway.observability.metrics import GatewayMetrics
    from gateway.pipeline.forwarding import Attempt, Forwarder
    from gateway.upstream.client import UpstreamClient
    from gateway.upstream.deadlines import Deadlines

    pool = EnginePool({"m": ["http://a", "http://b"]})
    upstream = UpstreamClient(UpstreamSettings())
    routing = RoutingTable(RoutingSettings(policy="round_robin"), {})
    defaults = Deadlines.of(UpstreamSettings(), None)
    forwarder = Forwarder(pool, upstream, GatewayMetrics(), 1, {}, defaults)
    attempt = Attempt("m", "/v1/chat/completions", b"{}", "r", routing.for_model("m")[0], None)
    firsts = [next(forwarder.candidates(attempt)) for _ in range(4)]
    assert firsts == ["http://a", "http://b", "http://a", "http://b"]
    assert list(forwarder.candidates(attempt)) == ["http://a", "http://b"]  # then the other one


def test_breaker_opens_after_consecutive_failures_then_half_opens() -> None:
    from gateway.pool.engine_pool import BreakerPolicy

    now = [0.0]
    pool = EnginePool({"m": ["http://a", "http://b"]}, BreakerPolicy(3, 10.0), lambda: now[0])
    for _ in range(2):
        pool.record_failure("http://a")
    pool.record_success("http://a")  # a success resets the count
    for _ in range(2):
        pool.record_failure("http://a")
    assert not pool.breaker_open("http://a")
    pool.record_failure("http://a")
    assert pool.breaker_open("http://a")
    assert [v.url for v in pool.snapshot("m")] == ["http://b"]
    pool.set_health("http://b", False)
    assert [v.url for v in pool.snapshot("m")] == ["http://b"], "open engines get no traffic"
    now[0] = 10.5  # cool-down over: half-open, one trial allowed
    assert "http://a" in [v.url for v in pool.snapshot("m")]
    pool.record_failure("http://a")  # the trial failed: open again
    assert pool.breaker_open("http://a")
    now[0] = 21.0
    pool.record_success("http://a")
    assert not pool.breaker_open("http://a")


def test_policies_count_the_engines_own_queue() -> None:
    views = (
        EndpointView("http://a", 0, True, waiting=5),
        EndpointView("http://b", 2, True, waiting=0),
    )
    assert LeastOutstanding().choose(views).url == "http://b"
    assert views[0].load == 5


def test_least_outstanding_breaks_load_ties_by_free_kv_cache() -> None:
    views = (
        EndpointView("http://a", 2, True, 0.0, 0.90),
        EndpointView("http://b", 2, True, 0.0, 0.20),
        EndpointView("http://c", 1, True, 2.0, 0.10),  # load 3: its queue counts
        EndpointView("http://d", 2, True, 0.0, 0.22),
    )
    policy = LeastOutstanding()
    chosen = {policy.choose(views).url for _ in range(6)}
    assert chosen == {"http://b", "http://d"}  # a is as busy but its KV cache is fuller


def test_retry_budget_allows_a_burst_then_a_share_of_traffic() -> None:
    from gateway.pipeline.forwarding import RetryBudget

    budget = RetryBudget(ratio=0.25, burst=2)
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]
    for _ in range(4):  # four requests earn one failover
        budget.deposit()
    assert budget.withdraw() and not budget.withdraw()


def test_engine_stats_read_prefix_cache_counters() -> None:
    from engines.stats import EngineStats

    text = (
        "# HELP vllm:prefix_cache_queries_total x\n"
        'vllm:prefix_cache_queries_total{engine="0"} 1000.0\n'
        'vllm:prefix_cache_hits_total{engine="0"} 640.0\n'
        'vllm:num_requests_waiting{engine="0"} 3.0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
    )
    stats = EngineStats.from_text(text)
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (1000.0, 640.0)
    assert (stats.waiting, stats.kv_cache_usage) == (3.0, 0.5)
