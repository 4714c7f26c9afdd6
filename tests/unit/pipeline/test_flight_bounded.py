"""A cacheable stream too large to store is not kept whole: once it passes the cache's
``max_entry_bytes`` its flight forgets each batch as soon as every follower has it, no
new follower joins, nothing is stored, and a follower already streaming still gets
every batch and completes. Before, every cacheable stream held its whole answer in
the gateway's memory until it ended, whatever its size (bug hunt: three 63 MB streams
at temperature 0 took ~73 MiB more than the same streams at temperature 1)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.cache.entry import Entry
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight
from gateway.config.cache import CacheSettings
from gateway.errors import UpstreamError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.cache_flow import CacheFill, follow_events
from gateway.upstream.relay import StreamOutcome

MODEL = "m"
LIMIT = 4096
BATCH = b'data: {"id":"chatcmpl-1","choices":[{"delta":{"content":"' + b"x" * 200 + b'"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


def setup() -> tuple[ResponseCache, MemoryEntryStore, CacheFill]:
    store = MemoryEntryStore(1 << 24)
    cache = ResponseCache(CacheSettings(enabled=True), {}, store, GatewayMetrics())
    fill = CacheFill(cache, MODEL, CachePlan("k", True, True, None, 60, LIMIT, stream=True))
    return cache, store, fill


def place(flight: Flight) -> object:
    """A follower placed in ``flight`` as an exchange places itself when it joins."""
    follower = object()
    flight.positions[follower] = 0
    return follower


async def stored(store: MemoryEntryStore) -> bytes | None:
    await asyncio.sleep(0)  # the store is written at the end of the turn
    return await store.get("k")


async def test_a_stream_past_the_limit_is_forgotten_batch_by_batch() -> None:
    cache, store, fill = setup()
    batches = 200  # ~44 KB: ten times the limit
    for _ in range(batches):
        fill.inspect(BATCH)
        assert len(fill.flight.batches) * len(BATCH) <= LIMIT + len(BATCH)
    assert cache.flights.join("k") is None  # no new follower for a stream not kept
    fill.inspect(DONE)
    fill.finish_stream(None)
    assert fill.flight.end == batches + 1
    assert fill.flight.batches == []
    assert await stored(store) is None


async def test_a_stream_within_the_limit_is_kept_and_stored() -> None:
    cache, store, fill = setup()
    for _ in range(5):
        fill.inspect(BATCH)
    assert cache.flights.join("k") is fill.flight
    fill.flight.leave()
    fill.inspect(DONE)
    fill.finish_stream(None)
    assert await stored(store) is not None


async def test_a_follower_streaming_gets_everything_while_the_flight_forgets() -> None:
    cache, store, fill = setup()
    fill.inspect(BATCH)
    flight = cache.flights.join("k")
    assert flight is fill.flight
    me = place(flight)
    outcome = StreamOutcome()
    ended: list[Entry] = []
    events = follow_events(flight, True, outcome, ended.append, None, me)
    received = [await anext(events)]  # the first batch, before the limit
    for _ in range(100):
        fill.inspect(BATCH)
        received.append(await anext(events))
        if not flight.keeping:  # past the limit: what the follower had is forgotten
            assert len(flight.batches) <= 1
    fill.inspect(DONE)
    fill.finish_stream(None)
    received.extend([chunk async for chunk in events])
    flight.leave(me)
    assert not flight.keeping and flight.base > 90
    assert b"".join(received).count(b"[DONE]") == 1
    assert b"".join(received).count(b'"delta"') == 101
    assert outcome.completed and outcome.error is None and len(ended) == 1
    assert await stored(store) is None


async def test_a_follower_that_has_not_started_keeps_every_batch() -> None:
    """A follower is placed at 0 when it joins: nothing is dropped before it reads, so
    its stream still begins at the first batch."""
    cache, _, fill = setup()
    fill.inspect(BATCH)
    flight = cache.flights.join("k")
    assert flight is not None
    me = place(flight)
    for _ in range(50):
        fill.inspect(BATCH)
    assert flight.base == 0 and len(flight.batches) == 51
    events = follow_events(flight, True, StreamOutcome(), lambda entry: None, None, me)
    first = await anext(events)
    assert first.count(b'"delta"') == 51
    fill.inspect(BATCH)  # now every follower has had the first 51
    assert flight.base == 51
    await events.aclose()
    flight.leave(me)
    assert flight.positions == {}


async def test_a_follower_that_left_holds_back_nothing_and_misleads_no_one() -> None:
    """Review: a follower whose client left while its generator stayed suspended kept
    its place, which counted as another follower's; batches that follower had not had
    were dropped and its stream began in the middle. Places now come and go with
    joining and leaving."""
    cache, _, fill = setup()
    fill.inspect(BATCH)
    flight = cache.flights.join("k")
    assert flight is not None
    gone = place(flight)
    left = follow_events(flight, True, StreamOutcome(), lambda entry: None, None, gone)
    await anext(left)  # it read the first batch, then its client left
    flight.leave(gone)
    late = cache.flights.join("k")  # another joins before the limit, reads nothing yet
    assert late is flight
    me = place(flight)
    for _ in range(50):
        fill.inspect(BATCH)  # past the limit: only what every follower had may go
    assert flight.base == 0
    events = follow_events(flight, True, StreamOutcome(), lambda entry: None, None, me)
    first = await anext(events)
    assert first.count(b'"delta"') == 51  # from the first batch, no gap
    await events.aclose()
    await left.aclose()


async def test_a_follower_behind_what_was_forgotten_fails_rather_than_skip() -> None:
    cache, _, fill = setup()
    fill.inspect(BATCH)
    flight = cache.flights.join("k")
    assert flight is not None
    flight.leave()  # counted out, as a bug might: its batches may go
    for _ in range(50):
        fill.inspect(BATCH)
    assert flight.base > 0
    outcome = StreamOutcome()
    events = follow_events(flight, True, outcome, lambda entry: None)
    with pytest.raises(UpstreamError):
        await anext(events)
    assert outcome.error is not None
