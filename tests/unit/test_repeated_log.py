"""Repeated identical errors of background work are logged with backoff and a count, not
once per tick: RepeatedLog itself, the registry watcher that uses it, and stopping a
task under a deadline."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from engines.registry import EngineRecord, InProcessRegistry
from gateway.background import Periodic, RepeatedLog
from gateway.pool.engine_pool import EnginePool
from gateway.pool.sources import RegistryWatcher

LOGGER = "vgate.test.repeated"


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def test_the_first_failure_is_logged_then_at_most_once_per_period_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    now = [0.0]
    repeated = RepeatedLog(logging.getLogger(LOGGER), relog_s=60.0, clock=lambda: now[0])
    for tick in range(120):  # one failure every 0.5 s for a minute
        now[0] = tick * 0.5
        repeated.failed("redis down")
    assert messages(caplog, LOGGER) == ["redis down"]
    now[0] = 60.0
    repeated.failed("redis down")
    assert messages(caplog, LOGGER) == ["redis down", "redis down (120 more since)"]
    repeated.recovered("redis back")
    assert messages(caplog, LOGGER)[-1] == "redis back after 121 failures"
    repeated.recovered("redis back")  # no streak: nothing to say
    assert len(messages(caplog, LOGGER)) == 3


def test_a_different_error_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    repeated = RepeatedLog(logging.getLogger(LOGGER), relog_s=60.0, clock=lambda: 0.0)
    for message in ("refused", "refused", "timeout", "timeout"):
        repeated.failed(message)
    assert messages(caplog, LOGGER) == ["refused", "timeout"]
    assert repeated.streak == 4


def test_errors_that_name_a_changing_detail_cannot_log_every_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, LOGGER)
    now = [0.0]
    repeated = RepeatedLog(logging.getLogger(LOGGER), relog_s=60.0, max_kinds=2,
                           clock=lambda: now[0])  # fmt: skip
    for tick in range(100):
        repeated.failed(f"timeout on connection {tick}")
    assert len(messages(caplog, LOGGER)) == 3  # two kinds, then one for all the others
    now[0] = 60.0
    repeated.failed("timeout on connection 100")
    assert messages(caplog, LOGGER)[-1] == "timeout on connection 100 (98 more since)"


class DownRegistry(InProcessRegistry):
    """A registry whose Redis is down while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def records(self) -> list[EngineRecord]:
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return await super().records()


async def test_the_registry_watcher_logs_an_outage_once_not_every_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "vgate.engines")
    registry = DownRegistry()
    watcher = RegistryWatcher(registry, EnginePool({}), {}, {})
    for _ in range(50):
        await watcher.refresh_or_keep()
    logged = messages(caplog, "vgate.engines")
    assert len(logged) == 1 and "engine registry unreadable" in logged[0]
    registry.down = False
    await registry.publish(EngineRecord("e1", "m", "http://e1", "starting", 1.0, "s"))
    await registry.publish(EngineRecord("e2", "m", "http://e2", "stopped", 1.0, "s"))
    await watcher.refresh_or_keep()
    assert messages(caplog, "vgate.engines")[-1] == (
        "engine registry readable again after 50 failures"
    )
    assert watcher.unrouted == 1  # starting counts as known; stopped does not


async def test_stopping_a_task_under_a_deadline_is_not_swallowed() -> None:
    """Periodic.stop waits for its loop to end; if that wait is cancelled (a shutdown
    deadline), the cancellation reaches the caller instead of being suppressed."""
    entered, released = asyncio.Event(), [False]

    async def stubborn() -> None:
        entered.set()
        while not released[0]:  # swallows cancellation: the bug a deadline must survive
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = Periodic("stubborn", 0.001, stubborn)
    await task.start()
    await asyncio.wait_for(entered.wait(), 5)
    [loop] = [t for t in asyncio.all_tasks() if t.get_name() == "vgate-stubborn"]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await task.stop()
    assert not loop.done()  # orphaned, as a shutdown deadline leaves it
    released[0] = True  # end it for good, so the test's loop closes cleanly
    deadline = asyncio.get_running_loop().time() + 5
    while not loop.done():
        assert asyncio.get_running_loop().time() < deadline
        loop.cancel()
        await asyncio.wait((loop,), timeout=0.01)
