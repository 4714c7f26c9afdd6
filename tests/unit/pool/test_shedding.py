"""Admission control: a request waits while every engine of its model is saturated,
is let in as soon as one frees up, and is shed (503 with ``Retry-After``) when the
queue is full or its wait runs out; the queue gauge and count always come back
to 0, a cancelled waiter included."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from engines.stats import EngineStats
from gateway.config.models import OverloadSettings
from gateway.errors import OverloadedError
from gateway.observability.metrics import GatewayMetrics
from gateway.pool.engine_pool import EnginePool
from gateway.pool.shedding import _RECHECK_S, LoadGate

MODEL = "m"
ENGINES = ("http://a", "http://b")


class Gate:
    def __init__(self, default: OverloadSettings, **per_model: OverloadSettings) -> None:
        self.pool = EnginePool({MODEL: ENGINES, "other": ("http://c",)})
        self.metrics = GatewayMetrics()
        self.gate = LoadGate(self.pool, per_model, default, self.metrics)

    def fill(self, *urls: str) -> None:
        for url in urls:
            self.pool.acquire(url)

    def queued(self, model: str = MODEL) -> float:
        value = self.metrics.registry.get_sample_value(
            "vgate_admission_queue_depth", {"model": model}
        )
        return value or 0.0

    def shed(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "vgate_shed_requests_total", {"model": MODEL}
        )
        return value or 0.0

    def waiter(self, model: str = MODEL) -> asyncio.Task[None]:
        """A request that waits at the gate, then takes the least busy engine at once
        (as the forwarder does, in the same loop turn)."""

        async def go() -> None:
            await self.gate.enter(model)
            views = self.pool.snapshot(model)
            self.pool.acquire(min(views, key=lambda v: v.in_flight).url)

        return asyncio.create_task(go())


def limited(**fields: float | int | None) -> OverloadSettings:
    return OverloadSettings.model_validate({"max_in_flight": 1} | fields)


async def until(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0)


async def test_unconstrained_models_never_wait() -> None:
    g = Gate(OverloadSettings())
    g.fill(*ENGINES * 50)
    await asyncio.wait_for(g.gate.enter(MODEL), 0.5)
    assert g.queued() == 0.0


async def test_no_wait_while_one_engine_has_room() -> None:
    g = Gate(limited())
    g.fill(ENGINES[0])
    await asyncio.wait_for(g.gate.enter(MODEL), 0.5)
    assert g.queued() == 0.0 and g.shed() == 0.0


async def test_limits_are_per_model() -> None:
    g = Gate(OverloadSettings(), other=limited(queue_size=0))
    g.fill(*ENGINES, "http://c")
    await asyncio.wait_for(g.gate.enter(MODEL), 0.5)  # the default: no limit
    with pytest.raises(OverloadedError):
        await g.gate.enter("other")


async def test_a_waiter_is_let_in_when_an_engine_is_released() -> None:
    g = Gate(limited(queue_timeout_s=5.0))
    g.fill(*ENGINES)
    task = g.waiter()
    await until(lambda: g.queued() == 1.0)
    assert not task.done()
    g.pool.release(ENGINES[1])
    # Woken by the release itself, well before the periodic re-check would see it.
    await until(task.done, timeout_s=_RECHECK_S / 2)
    await task
    assert g.queued() == 0.0
    assert [s.in_flight for s in g.pool.states()][:2] == [1, 1]


async def test_one_freed_slot_lets_in_one_waiter() -> None:
    g = Gate(limited(queue_timeout_s=5.0))
    g.fill(*ENGINES)
    first, second = g.waiter(), g.waiter()
    await until(lambda: g.queued() == 2.0)
    g.pool.release(ENGINES[0])
    await until(lambda: first.done() or second.done(), timeout_s=_RECHECK_S / 2)
    for _ in range(5):  # the other one woke too, saw no room and waits again
        await asyncio.sleep(0)
    assert [first.done(), second.done()].count(True) == 1
    assert g.queued() == 1.0
    g.pool.release(ENGINES[1])
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert g.queued() == 0.0


async def test_a_waiter_sees_an_engine_queue_drain() -> None:
    g = Gate(OverloadSettings(max_waiting=3, queue_timeout_s=5.0))
    for url in ENGINES:
        g.pool.set_stats(url, EngineStats(running=8, waiting=3, kv_cache_usage=0.9))
    task = asyncio.create_task(g.gate.enter(MODEL))
    await until(lambda: g.queued() == 1.0)
    g.pool.set_stats(ENGINES[0], EngineStats(running=8, waiting=0, kv_cache_usage=0.9))
    await asyncio.wait_for(task, _RECHECK_S * 10)  # no release: the re-check finds it
    assert g.queued() == 0.0


async def test_shed_at_once_when_the_queue_is_full() -> None:
    g = Gate(limited(queue_size=1, queue_timeout_s=5.0, retry_after_s=7))
    g.fill(*ENGINES)
    queued = g.waiter()
    await until(lambda: g.queued() == 1.0)
    with pytest.raises(OverloadedError, match="queue is full") as caught:
        await asyncio.wait_for(g.gate.enter(MODEL), 0.5)
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "7"
    assert caught.value.headers["retry-after-ms"] == "7000"  # read first by the SDKs
    assert g.shed() == 1.0 and g.queued() == 1.0
    g.pool.release(ENGINES[0])
    await asyncio.wait_for(queued, 1)
    assert g.queued() == 0.0


async def test_shed_when_the_wait_runs_out() -> None:
    g = Gate(limited(queue_timeout_s=0.01, retry_after_s=2))
    g.fill(*ENGINES)
    with pytest.raises(OverloadedError, match="no engine freed up") as caught:
        await asyncio.wait_for(g.gate.enter(MODEL), 1)
    assert caught.value.headers["Retry-After"] == "2"
    assert g.shed() == 1.0
    assert g.queued() == 0.0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    g = Gate(limited(queue_size=1, queue_timeout_s=5.0))
    g.fill(*ENGINES)
    task = g.waiter()
    await until(lambda: g.queued() == 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert g.queued() == 0.0
    again = g.waiter()  # its place in the queue (size 1) is free: queued, not shed
    await until(lambda: g.queued() == 1.0)
    assert not again.done()
    g.pool.release(ENGINES[0])
    await asyncio.wait_for(again, 1)
    assert g.shed() == 0.0


async def admitted_in_order(g: Gate, waiters: list[tuple[str, int]]) -> list[str]:
    """Each waiter (key, priority) queues in turn at a saturated gate; slots are then
    freed one at a time: the keys in the order they were let in."""
    order: list[str] = []

    async def go(key: str, priority: int) -> None:
        await g.gate.enter(MODEL, key, priority)
        order.append(key)
        g.pool.acquire(ENGINES[0])

    tasks = []
    for key, priority in waiters:
        tasks.append(asyncio.create_task(go(key, priority)))
        await until(lambda: g.queued() == len(tasks))
    for admitted in range(1, len(waiters) + 1):
        g.pool.release(ENGINES[0])
        await until(lambda: len(order) == admitted)  # noqa: B023
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(order) == admitted  # one slot, one waiter: no herd
    await asyncio.gather(*tasks)
    return order


async def test_the_earliest_tier_is_admitted_first() -> None:
    g = Gate(limited(queue_timeout_s=5.0))
    g.fill(*ENGINES)
    order = await admitted_in_order(g, [("batch", 10), ("batch", 10), ("web", 0), ("chat", -10)])
    assert order == ["chat", "web", "batch", "batch"]


async def test_keys_of_a_tier_are_admitted_in_turn() -> None:
    g = Gate(limited(queue_timeout_s=5.0))
    g.fill(*ENGINES)
    order = await admitted_in_order(g, [("flood", 0)] * 6 + [("quiet", 0)] * 2)
    assert order[:4] == ["flood", "quiet", "flood", "quiet"]


async def test_a_newcomer_queues_behind_waiters_even_when_it_sees_room() -> None:
    g = Gate(OverloadSettings(max_waiting=3, queue_timeout_s=5.0))
    for url in ENGINES:
        g.pool.set_stats(url, EngineStats(running=8, waiting=3, kv_cache_usage=0.9))
    first = asyncio.create_task(g.gate.enter(MODEL, "a"))
    await until(lambda: g.queued() == 1.0)
    g.pool.set_stats(ENGINES[0], EngineStats(running=8, waiting=0, kv_cache_usage=0.9))
    order: list[str] = []
    first.add_done_callback(lambda _: order.append("a"))
    late = asyncio.create_task(g.gate.enter(MODEL, "b"))
    late.add_done_callback(lambda _: order.append("b"))
    await asyncio.wait_for(asyncio.gather(first, late), 2)
    assert order == ["a", "b"]
    assert g.queued() == 0.0


async def test_room_handed_to_a_waiter_that_gave_up_goes_to_the_next() -> None:
    g = Gate(limited(queue_timeout_s=5.0))
    g.fill(*ENGINES)
    leaving = asyncio.create_task(g.gate.enter(MODEL, "a"))
    staying = g.waiter()
    await until(lambda: g.queued() == 2.0)
    g.pool.release(ENGINES[0])  # handed to "a", which leaves before it runs
    leaving.cancel()
    await asyncio.wait_for(staying, 1)
    assert leaving.cancelled()
    assert g.queued() == 0.0


async def test_a_full_queue_sheds_a_later_tier_waiter_not_an_earlier_tier_newcomer() -> None:
    """A low-tier flood that fills the queue must not get a high-tier request shed:
    the newest waiter of the latest tier gives its place up (503) instead."""
    g = Gate(limited(queue_size=2, queue_timeout_s=5.0))
    g.fill(*ENGINES)
    order: list[str] = []

    async def go(key: str, priority: int) -> None:
        await g.gate.enter(MODEL, key, priority)
        order.append(key)
        g.pool.acquire(ENGINES[0])

    first = asyncio.create_task(go("batch-1", 10))
    second = asyncio.create_task(go("batch-2", 10))
    await until(lambda: g.queued() == 2.0)
    urgent = asyncio.create_task(go("chat", -10))
    with pytest.raises(OverloadedError) as caught:
        await asyncio.wait_for(second, 1)
    assert caught.value.status == 503
    assert g.shed() == 1.0 and g.queued() == 2.0
    g.pool.release(ENGINES[0])
    await until(lambda: order == ["chat"])
    g.pool.release(ENGINES[0])
    await asyncio.wait_for(asyncio.gather(urgent, first), 1)
    assert order == ["chat", "batch-1"]
    assert g.queued() == 0.0


async def test_a_full_queue_lets_a_quiet_key_in_at_a_flooders_expense() -> None:
    g = Gate(limited(queue_size=3, queue_timeout_s=5.0))
    g.fill(*ENGINES)
    flood = [asyncio.create_task(g.gate.enter(MODEL, "flood")) for _ in range(3)]
    await until(lambda: g.queued() == 3.0)
    quiet = asyncio.create_task(g.gate.enter(MODEL, "quiet"))
    with pytest.raises(OverloadedError):
        await asyncio.wait_for(flood[2], 1)  # the flooder's newest gave its place up
    assert g.queued() == 3.0 and not quiet.done()
    with pytest.raises(OverloadedError, match="queue is full"):  # the same key: no swap
        await asyncio.wait_for(g.gate.enter(MODEL, "flood"), 1)
    for _ in range(3):
        g.pool.release(ENGINES[0])
    await asyncio.wait_for(asyncio.gather(quiet, *flood[:2]), 1)
    assert g.queued() == 0.0
