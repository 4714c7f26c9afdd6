"""Deleting a stored response in Redis removes the record and counts it out of its
owner's quota in one step: as two calls (the record, then the count), a Redis that
stopped answering between them left the deleted record on the quota until its expiry
(30 days), and two clients deleting one id at once each ran both. Against a real
redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.responses import RedisResponseStore
from gateway.errors import StoreUnavailable


class FailingAfter(redis.asyncio.Redis):
    """A client whose commands fail (connection lost) once :attr:`allowed` more have
    run, while armed (``allowed`` not None)."""

    allowed: int | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.allowed is not None:
            if self.allowed <= 0:
                raise redis.exceptions.ConnectionError("connection lost")
            self.allowed -= 1
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[FailingAfter]:
    failing = FailingAfter.from_url(redis_url)
    assert isinstance(failing, FailingAfter)
    yield failing
    await failing.aclose()


@pytest.fixture
async def store(redis_url: str, client: FailingAfter) -> AsyncIterator[RedisResponseStore]:
    link = RedisLink(redis_url, timeout_s=5.0, retry_s=0.1)
    yield RedisResponseStore(link, prefix=f"test:{uuid.uuid4().hex}:", client=client)
    await link.close()


async def test_a_delete_cut_short_leaves_record_and_count_together(
    store: RedisResponseStore, client: FailingAfter
) -> None:
    assert await store.put("kept", b"k" * 300, 60, "alice", None)
    assert await store.put("gone", b"g" * 700, 60, "alice", None)
    assert await store.usage("alice") == 1000
    assert not await store.delete("never", "alice")  # the scripts loaded, as in service
    client.allowed = 1  # Redis answers the delete's first command, then no more
    deleted: bool | None = None
    with contextlib.suppress(StoreUnavailable):  # the client is told: it may try again
        deleted = await store.delete("gone", "alice")
    client.allowed = None
    record = await store.get("gone")
    usage = await store.usage("alice")
    # Whichever way it went, the record and its count went together.
    assert (record is None, usage) in ((True, 300), (False, 1000)), (deleted, record, usage)
    assert deleted is None or (deleted and record is None)


async def test_concurrent_deletes_of_one_id_delete_it_once(store: RedisResponseStore) -> None:
    assert await store.put("kept", b"k" * 300, 60, "bob", None)
    assert await store.put("twice", b"t" * 700, 60, "bob", None)
    results = await asyncio.gather(*(store.delete("twice", "bob") for _ in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    assert await store.usage("bob") == 300
    assert await store.get("twice") is None
    assert not await store.owns("twice", "bob")
    assert await store.get("kept") == b"k" * 300
