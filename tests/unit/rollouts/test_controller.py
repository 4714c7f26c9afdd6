"""The controller over a shared (memory) store: a breach rolls back once, on every
replica's copy; a healthy canary climbs its steps one at a time, even when two
replicas decide together; a rolled-back canary is not promoted."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from gateway.backends.memory.rollouts import MemoryRolloutStore
from gateway.rollouts.rollout_metrics import RolloutMetrics
from gateway.rollouts.verdict import Breach, share_percent
from tests.unit.rollouts.world import Clock, feed, replica, rollout


async def test_breach_rolls_back_once_for_every_replica(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "vgate.rollouts")
    store, clock = MemoryRolloutStore(), Clock()
    settings = rollout()
    a, b = replica(settings, store, clock), replica(settings, store, clock)
    registry = CollectorRegistry()
    a.metrics = RolloutMetrics(registry, a.weight_rows)
    await a.step()
    await b.step()
    assert a.weights("m") == {"stable": 90.0, "canary": 10.0}
    feed(a, "stable", 100)
    feed(a, "canary", 40, fail_every=4)
    feed(b, "canary", 40, fail_every=4)
    await a.step()
    assert a.weights("m") == {"stable": 90.0, "canary": 0.0}
    await b.step()  # b judged a breach too, but finds it done: no second rollback
    assert b.weights("m") == {"stable": 90.0, "canary": 0.0}
    versioned = b.book.current("m")
    assert versioned is not None and versioned.version == 2
    mark = versioned.record.rolled_back["canary"]
    assert (mark.reason, mark.by, mark.at) == ("error_rate", "controller", clock.now)
    assert versioned.record.last_rollback == ("canary", mark)
    lines = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
    assert len(lines) == 1 and "error rate 0.250" in lines[0]
    count = registry.get_sample_value(
        "vgate_rollout_rollbacks_total",
        {"rollout": "m", "variant": "canary", "reason": "error_rate"},
    )
    assert count == 1.0
    weight = registry.get_sample_value(
        "vgate_rollout_weight", {"rollout": "m", "variant": "canary"}
    )
    assert weight == 0.0


async def test_latency_breach_reason() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    control = replica(rollout(), store, clock)
    await control.step()
    feed(control, "stable", 100, ttft_s=0.1)
    feed(control, "canary", 30, ttft_s=0.5)
    await control.step()
    versioned = control.book.current("m")
    assert versioned is not None
    assert versioned.record.rolled_back["canary"].reason == "ttft_p95"


async def test_healthy_canary_climbs_each_step_after_healthy_for_s() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    settings = rollout(promote={"steps": [10, 25, 50, 100], "healthy_for_s": 5})
    a, b = replica(settings, store, clock), replica(settings, store, clock)
    seen: list[float] = []
    for _ in range(200):
        feed(a, "stable", 5)
        feed(a, "canary", 5)
        feed(b, "stable", 5)
        feed(b, "canary", 5)
        await a.step()
        await b.step()
        share = share_percent(a.weights("m"), "canary")
        if not seen or seen[-1] != share:
            seen.append(share)
        clock.now += 0.5
    assert seen == [10.0, 25.0, 50.0, 100.0]
    versioned = a.book.current("m")
    assert versioned is not None and versioned.version == 4  # created + three steps
    assert versioned.record.action == "promote"


async def test_steps_wait_for_healthy_for_s() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    settings = rollout(promote={"steps": [10, 25], "healthy_for_s": 30})
    control = replica(settings, store, clock)
    for _ in range(50):  # 25 s healthy: not yet
        feed(control, "stable", 5)
        feed(control, "canary", 5)
        await control.step()
        clock.now += 0.5
    assert control.weights("m")["canary"] == 10.0


async def test_a_rolled_back_canary_is_not_promoted() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    settings = rollout(promote={"steps": [10, 25], "healthy_for_s": 1})
    control = replica(settings, store, clock)
    await control.step()
    feed(control, "canary", 40, fail_every=2)
    await control.step()
    assert control.weights("m")["canary"] == 0.0
    for _ in range(40):
        clock.now += 0.5
        await control.step()
    assert control.weights("m")["canary"] == 0.0
    watch = control.watch("m", "canary")
    assert watch is not None and watch.verdict is None


async def test_waiting_verdict_below_min_requests() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    control = replica(rollout(), store, clock)
    feed(control, "canary", 19, fail_every=1)
    await control.step()
    assert control.weights("m")["canary"] == 10.0
    watch = control.watch("m", "canary")
    assert watch is not None and not isinstance(watch.verdict, Breach)


async def test_a_store_outage_keeps_the_last_weights(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.errors import StoreUnavailable

    class Down(MemoryRolloutStore):
        async def version(self) -> str:
            raise StoreUnavailable("down")

    control = replica(rollout(), Down(), Clock())
    caplog.set_level(logging.WARNING, "vgate.rollouts")
    await control.step()
    await control.step()
    assert control.weights("m") == {"stable": 90.0, "canary": 10.0}
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
