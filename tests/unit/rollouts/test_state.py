"""The shared rollout state: created from the config, versioned, compare-and-set, a new
state for changed variants, damaged records replaced rather than fatal."""

from __future__ import annotations

import logging

import pytest

from gateway.backends.memory.rollouts import MemoryRolloutStore
from gateway.rollouts.state import RolloutBook, RolloutRecord, config_digest
from tests.unit.rollouts.world import Clock, rollout


async def test_initial_state_is_the_configured_weights_before_and_after_refresh() -> None:
    store = MemoryRolloutStore()
    book = RolloutBook([rollout()], store, Clock())
    assert book.weights("m") == {"stable": 90.0, "canary": 10.0}
    assert book.weights("unknown") == {}
    await book.refresh()
    versioned = book.current("m")
    assert versioned is not None and versioned.version == 1
    assert await store.version() == "1"


async def test_a_write_reaches_another_book_on_its_next_refresh() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    a, b = RolloutBook([rollout()], store, clock), RolloutBook([rollout()], store, clock)
    await a.refresh()
    await b.refresh()
    current = a.current("m")
    assert current is not None
    changed = RolloutRecord({"stable": 50.0, "canary": 50.0}, clock.now, "operator", "set")
    assert await a.write("m", current.version, changed)
    assert a.weights("m") == {"stable": 50.0, "canary": 50.0}
    assert b.weights("m") == {"stable": 90.0, "canary": 10.0}
    await b.refresh()
    assert b.weights("m") == {"stable": 50.0, "canary": 50.0}
    assert not await b.write("m", current.version, changed)  # stale version: refused


async def test_update_retries_on_a_concurrent_write() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    a, b = RolloutBook([rollout()], store, clock), RolloutBook([rollout()], store, clock)
    await a.refresh()
    await b.refresh()
    calls = 0

    async def sneak_in() -> None:
        current = b.current("m")
        assert current is not None
        other = RolloutRecord({"stable": 1.0, "canary": 1.0}, clock.now)
        assert await b.write("m", current.version, other)

    def change(record: RolloutRecord) -> RolloutRecord:
        nonlocal calls
        calls += 1
        return RolloutRecord({**record.weights, "canary": record.weights["canary"] + 1}, clock.now)

    await sneak_in()  # a's copy is stale now; update reads first, so it sees b's write
    after = await a.update("m", change)
    assert calls == 1 and after.record.weights == {"stable": 1.0, "canary": 2.0}


async def test_changed_variants_start_a_fresh_state() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    old = RolloutBook([rollout()], store, clock)
    await old.refresh()
    current = old.current("m")
    assert current is not None
    await old.write("m", current.version, RolloutRecord({"stable": 0.0, "canary": 1.0}, 0.0))
    variants = [
        {"model": "stable", "weight": 80},
        {"model": "canary", "weight": 20, "canary": True},
    ]
    new_settings = rollout(variants=variants)
    assert config_digest(new_settings) != config_digest(rollout())
    new = RolloutBook([new_settings], store, clock)
    await new.refresh()
    assert new.weights("m") == {"stable": 80.0, "canary": 20.0}
    await old.refresh()  # the old config keeps its own state
    assert old.weights("m") == {"stable": 0.0, "canary": 1.0}
    slo_changed = RolloutBook([rollout(slo={"window_s": 99})], store, clock)
    await slo_changed.refresh()  # SLO settings are not part of the identity
    assert slo_changed.weights("m") == {"stable": 0.0, "canary": 1.0}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"weights": {"stable": -1, "canary": 1}, "changed_at": 0, "changed_by": "x",'
        b' "action": "set", "rolled_back": {}}',
        b'{"weights": {"stable": 1}, "changed_at": 0, "changed_by": "x", "action": "set",'
        b' "rolled_back": {}}',
        b'{"weights": [1, 2], "changed_at": 0}',
    ],
)
async def test_a_damaged_record_is_replaced_by_the_configured_state(
    raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vgate.rollouts")
    store, clock = MemoryRolloutStore(), Clock()
    settings = rollout()
    name = f"m@{config_digest(settings)}"
    assert await store.compare_and_set(name, 0, raw) == 1
    book = RolloutBook([settings], store, clock)
    await book.refresh()
    assert book.weights("m") == {"stable": 90.0, "canary": 10.0}
    assert "cannot be read" in caplog.text
    current = book.current("m")
    assert current is not None and current.version == 1
    assert await book.write("m", 1, RolloutRecord({"stable": 1.0, "canary": 0.0}, 0.0))


def test_record_round_trip() -> None:
    from gateway.rollouts.state import RollbackMark

    mark = RollbackMark("error_rate", "why", 12.5, "controller")
    record = RolloutRecord(
        {"stable": 90.0, "canary": 0.0},
        12.5,
        "controller",
        "rollback",
        {"canary": mark},
        ("canary", mark),
        {"canary": 3.0},
    )
    assert RolloutRecord.decode(record.encode(), ["stable", "canary"]) == record
