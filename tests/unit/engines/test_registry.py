"""Engine records decode tolerantly, and the Redis registry reads them one by one: an
undecodable record is skipped, logged once (not at every poll) and counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import orjson
import pytest
import redis

from engines.registry import REDIS_KEY, EngineRecord, InProcessRegistry, RedisRegistry

RECORD = EngineRecord("e1", "m", "http://127.0.0.1:9", "ready", 1.0, "sup", 2, 0.0)


def as_json(record: EngineRecord, **extra: Any) -> bytes:
    return orjson.dumps(asdict(record) | extra)


def test_a_record_round_trips() -> None:
    assert EngineRecord.decode(RECORD.encode()) == RECORD


def test_unknown_fields_are_ignored() -> None:
    raw = as_json(RECORD, gpu="H100", weights={"sha": "abc"})
    assert EngineRecord.decode(raw) == RECORD


def test_defaults_apply_and_an_int_passes_for_a_float() -> None:
    raw = orjson.dumps({"engine_id": "e", "model": "m", "url": "u", "state": "starting",
                        "started_at": 5, "supervisor": "s"})  # fmt: skip
    assert EngineRecord.decode(raw) == EngineRecord("e", "m", "u", "starting", 5.0, "s")


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "warming"},  # a state this version cannot judge
        {"state": None},
        {"url": 80},
        {"started_at": "now"},
        {"restarts": 1.5},
        {"restarts": True},
        {"expires_at": None},
    ],
)
def test_wrong_values_raise_value_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every reason is a ValueError
        EngineRecord.decode(orjson.dumps(asdict(RECORD) | changes))


@pytest.mark.parametrize("raw", [b"{", b'"a string"', b'{"engine_id": "e"}'])
def test_bad_json_or_a_missing_field_raises_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every reason is a ValueError
        EngineRecord.decode(raw)


async def test_the_in_process_registry_never_skips() -> None:
    registry = InProcessRegistry()
    await registry.publish(RECORD)
    assert await registry.records() == [RECORD] and registry.skipped_records == 0


@pytest.fixture
def private_db(redis_url: str) -> Iterator[str]:
    """A Redis database of its own (the session's db 0 holds other tests' engines)."""
    url = redis_url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    client.delete(REDIS_KEY)
    yield url
    client.delete(REDIS_KEY)
    client.close()


async def test_redis_registry_skips_bad_records_logs_each_once_and_counts_every_skip(
    private_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vgate.engines")
    later = time.time() + 3600
    client = redis.Redis.from_url(private_db)
    client.hset(REDIS_KEY, mapping={
        "newer": as_json(EngineRecord("newer", "m", "http://a", "ready", 1.0, "s", 0, later),
                         protocol=2),
        "broken": b"{not json",
        "unknown-state": as_json(RECORD, state="warming", expires_at=later),
        "expired": as_json(RECORD, engine_id="expired", expires_at=1.0),
    })  # fmt: skip
    registry = RedisRegistry(private_db, ttl_s=30)
    try:
        first = await registry.records()
        second = await registry.records()
        assert [r.engine_id for r in first] == ["newer"] == [r.engine_id for r in second]
        assert registry.skipped_records == 4  # two bad records, two reads
        warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert len(warnings) == 2  # once per record, not per poll
        assert any("'broken'" in w for w in warnings)
        assert any("'unknown-state'" in w and "warming" in w for w in warnings)
        assert not client.hexists(REDIS_KEY, "expired")  # expired ones are still cleaned

        client.hset(REDIS_KEY, "broken", b"[]")  # a new bad value: logged again
        await registry.records()
        assert len([r for r in caplog.records if "skipping" in r.getMessage()]) == 3
    finally:
        await registry.close()
        client.close()
