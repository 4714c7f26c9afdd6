"""A single-flight leader's client does not pace its followers: once someone follows,
the engine is read at its own pace into the flight and into the leader's queue, each
reader takes its part at its own pace, and a reader more than ``max_lag_bytes``
behind is cut (:class:`SlowReaderError`) while the others go on. Before, the leader's
relay read the engine only as fast as the leader's client took the bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight, FlightFailed
from gateway.config.cache import CacheSettings
from gateway.errors import SlowReaderError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.cache_flow import CacheFill, follow_events
from gateway.pipeline.leader_stream import LeaderStream
from gateway.upstream.relay import StreamOutcome
from tests.helpers.waiting import until

MODEL = "m"
LAG = 4096
BATCH = b'data: {"id":"chatcmpl-1","choices":[{"delta":{"content":"' + b"x" * 200 + b'"}}]}\n\n'
DONE = b"data: [DONE]\n\n"


class Engine:
    """A relay fed by the test: each batch goes through the fill's tap, as the relay's."""

    def __init__(self, fill: CacheFill) -> None:
        self.fill = fill
        self.feed: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.read = 0  # batches the relay has taken from the engine
        self.waiting = False  # a step of the relay waits for the engine
        self.closed = False  # the relay ended (its engine stream with it)

    async def relay(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                self.waiting = True
                batch = await self.feed.get()
                self.waiting = False
                if batch is None:
                    return
                self.read += 1
                if batch == DONE:  # the relay's end: the fill lands, then the last batch
                    self.fill.finish_stream(None)
                    yield self.fill.inspect(batch)
                    return
                yield self.fill.inspect(batch)
        finally:
            self.closed = True

    def send(self, *batches: bytes) -> None:
        for batch in batches:
            self.feed.put_nowait(batch)


def setup(max_entry_bytes: int = 1 << 20) -> tuple[ResponseCache, CacheFill, Engine]:
    settings = CacheSettings(enabled=True, max_lag_bytes=LAG)
    cache = ResponseCache(settings, {}, MemoryEntryStore(1 << 24), GatewayMetrics())
    plan = CachePlan("k", True, True, None, 60, max_entry_bytes, stream=True)
    fill = CacheFill(cache, MODEL, plan)
    return cache, fill, Engine(fill)


def join(cache: ResponseCache) -> tuple[Flight, object]:
    flight = cache.flights.join("k")
    assert flight is not None
    me = object()
    flight.positions[me] = 0
    return flight, me


async def test_without_followers_the_client_pulls_the_engine_itself() -> None:
    _, fill, engine = setup()
    released: list[bool] = []
    leader = LeaderStream(engine.relay(), fill, lambda: released.append(True))
    engine.send(BATCH, DONE)
    assert [batch async for batch in leader] == [BATCH, DONE]
    leader.close()
    assert released == [True]
    assert fill.flight.entry is not None


async def test_a_leader_that_reads_nothing_does_not_pace_its_follower() -> None:
    cache, fill, engine = setup()
    leader = LeaderStream(engine.relay(), fill, lambda: None)
    engine.send(BATCH)
    assert await anext(leader) == BATCH  # then its client takes no more
    flight, me = join(cache)
    outcome = StreamOutcome()
    follower = follow_events(flight, True, outcome, lambda entry: None, None, me)
    many = LAG // len(BATCH) * 3
    engine.send(*[BATCH] * many, DONE)
    got = b"".join([batch async for batch in follower])  # while the leader reads nothing
    assert outcome.completed and got.count(b"data: ") == many + 2
    assert engine.read == many + 2
    with pytest.raises(SlowReaderError):  # it fell more than LAG behind: cut, no rest
        await anext(leader)


async def test_a_leader_that_reads_again_in_time_gets_everything_in_order() -> None:
    cache, fill, engine = setup()
    leader = LeaderStream(engine.relay(), fill, lambda: None)
    flight, _ = join(cache)  # joins while the engine is asked: the pump reads at once
    engine.send(BATCH, BATCH, DONE)
    await until(lambda: flight.entry is not None)
    assert [batch async for batch in leader] == [BATCH * 2 + DONE]


async def test_a_follower_joining_during_the_clients_own_step_is_not_paced() -> None:
    """The leader's client is inside a step of the relay (waiting for the engine) when a
    follower joins: the pump takes over once that step has brought its batch."""
    cache, fill, engine = setup()
    leader = LeaderStream(engine.relay(), fill, lambda: None)
    step = asyncio.ensure_future(anext(leader))
    await until(lambda: engine.waiting)  # the relay waits on the engine
    flight, _ = join(cache)
    engine.send(BATCH, BATCH, BATCH, DONE)
    assert await step == BATCH  # the client's own step; then it takes no more
    await until(lambda: flight.entry is not None)  # the engine read to its end meanwhile
    assert engine.read == 4


async def test_the_leaders_queue_never_holds_more_than_the_lag() -> None:
    cache, fill, engine = setup()
    leader = LeaderStream(engine.relay(), fill, lambda: None)
    join(cache)
    peak = 0
    for _ in range(LAG // len(BATCH) * 3):
        engine.send(BATCH)
        await until(lambda: engine.feed.empty())
        await asyncio.sleep(0)
        peak = max(peak, sum(map(len, leader._queue)))
    assert 0 < peak <= LAG


async def test_the_engine_is_read_on_for_followers_once_the_leaders_client_left() -> None:
    cache, fill, engine = setup()
    released: list[bool] = []
    leader = LeaderStream(engine.relay(), fill, lambda: released.append(True))
    flight, _ = join(cache)
    engine.send(BATCH)
    await until(lambda: engine.read == 1)
    leader.close()  # its client left: the follower still reads
    assert not released
    engine.send(BATCH, DONE)
    await until(lambda: flight.entry is not None)
    assert released == [True]
    assert flight.end == 3


async def test_the_engine_request_ends_once_nobody_reads_it() -> None:
    cache, fill, engine = setup()
    released: list[bool] = []
    leader = LeaderStream(engine.relay(), fill, lambda: released.append(True))
    flight, me = join(cache)
    engine.send(BATCH)
    await until(lambda: engine.read == 1)
    leader.close()
    assert not engine.closed and not released  # read on for the follower
    flight.leave(me)  # the last reader leaves: the pump is cancelled, the request released
    await until(lambda: bool(released))
    assert engine.closed  # the engine's stream was closed


async def test_a_leader_leaving_before_the_pump_took_over_fails_the_flight_as_before() -> None:
    cache, fill, engine = setup()
    released: list[bool] = []
    leader = LeaderStream(engine.relay(), fill, lambda: released.append(True))
    step = asyncio.ensure_future(anext(leader))
    await until(lambda: engine.waiting)
    join(cache)  # the pump waits for the client's step to end
    step.cancel()  # the client leaves inside it
    with pytest.raises(asyncio.CancelledError):
        await step
    leader.close()
    assert released == [True]


async def test_a_follower_too_far_behind_a_stream_no_longer_kept_is_cut() -> None:
    """The others keep their place; the flight holds at most ``max_lag_bytes``."""
    flight = Flight(max_lag_bytes=LAG)
    flight.followers = 2
    slow, quick = object(), object()
    flight.positions.update({slow: 0, quick: 0})
    flight.stop_keeping()
    for _ in range(LAG // len(BATCH) * 2):
        flight.publish(BATCH)
        flight.positions[quick] = flight.end  # keeps up
        assert flight.held <= LAG
    assert flight.cut == {slow} and list(flight.positions) == [quick]
    with pytest.raises(FlightFailed):
        flight.since(0)
    outcome = StreamOutcome()
    events = follow_events(flight, True, outcome, lambda entry: None, None, slow)
    with pytest.raises(SlowReaderError):
        await anext(events)
    flight.leave(slow)
    assert flight.cut == set() and flight.followers == 1


async def test_a_leader_nobody_follows_any_more_is_waited_for_not_cut() -> None:
    """Its followers gone, a slow leader paces nobody: the engine is read only as far as
    its queue has room (as a stream nobody follows waits for its client), and it gets
    its whole answer. Before, it was cut once its client fell ``max_lag_bytes`` behind."""
    cache, fill, engine = setup()
    leader = LeaderStream(engine.relay(), fill, lambda: None)
    flight, me = join(cache)
    engine.send(BATCH)
    await until(lambda: engine.read == 1)
    flight.leave(me)  # the only follower leaves: the leader's client reads nothing yet
    many = LAG // len(BATCH) * 3
    engine.send(*[BATCH] * many, DONE)
    await until(lambda: sum(map(len, leader._queue)) > LAG)  # its queue is full
    read = engine.read
    for _ in range(20):  # the pump waits for the client: the engine is read no further
        await asyncio.sleep(0)
    assert engine.read == read < many
    got = b"".join([batch async for batch in leader])
    assert got == BATCH * (many + 1) + DONE
    assert engine.read == many + 2


async def test_a_follower_joining_a_paused_leader_is_not_paced_by_it() -> None:
    cache, fill, engine = setup()
    leader = LeaderStream(engine.relay(), fill, lambda: None)
    flight, me = join(cache)
    flight.leave(me)
    many = LAG // len(BATCH) * 3
    engine.send(*[BATCH] * many, DONE)
    await until(lambda: sum(map(len, leader._queue)) > LAG)  # paused, waiting for its client
    later, _ = join(cache)  # (the stream is still kept whole: a follower may join)
    assert later is flight
    await until(lambda: flight.entry is not None)  # read on at the engine's pace
    with pytest.raises(SlowReaderError):  # the leader paces someone again: cut
        await anext(leader)


async def test_a_cut_leader_is_released_with_the_pump_without_its_client() -> None:
    """The leader's client reads nothing (its writes block) and falls behind its follower:
    once cut, nothing waits on it any more. ``on_cut`` is told (the HTTP edge hangs up,
    the cut is counted) and the request is released as soon as the follower has read the
    engine's answer, though the client's stream never ended. Before, the request (its
    engine slot, its ticket) was held until the client's stream ended: for one that
    never reads again, until the send deadline reset it."""
    cache, fill, engine = setup()
    released: list[bool] = []
    cuts: list[bool] = []
    leader = LeaderStream(
        engine.relay(), fill, lambda: released.append(True), lambda: cuts.append(True)
    )
    engine.send(BATCH)
    assert await anext(leader) == BATCH  # then its client takes no more
    flight, me = join(cache)
    outcome = StreamOutcome()
    follower = follow_events(flight, True, outcome, lambda entry: None, None, me)
    many = LAG // len(BATCH) * 3
    engine.send(*[BATCH] * many)
    await until(lambda: bool(cuts))
    assert cuts == [True] and not released  # cut; the engine is read on for the follower
    engine.send(DONE)
    got = b"".join([batch async for batch in follower])
    assert outcome.completed and got.count(b"data: ") == many + 2
    await until(lambda: bool(released))  # without the leader's client ending its stream
    assert released == [True] and engine.closed
    with pytest.raises(SlowReaderError):  # the client, back for more, finds the error
        await anext(leader)
    leader.close()
    assert released == [True] and cuts == [True]


async def test_a_cut_leader_whose_followers_leave_ends_the_engine_request() -> None:
    """Cut, then its follower leaves: nobody reads the engine's answer any more, so the
    engine request ends and is released (before: it was read to its end for nobody,
    until the leader's client came back or its connection was reset)."""
    cache, fill, engine = setup()
    released: list[bool] = []
    cuts: list[bool] = []
    leader = LeaderStream(
        engine.relay(), fill, lambda: released.append(True), lambda: cuts.append(True)
    )
    engine.send(BATCH)
    assert await anext(leader) == BATCH
    flight, me = join(cache)
    engine.send(*[BATCH] * (LAG // len(BATCH) * 3))
    await until(lambda: bool(cuts))
    flight.leave(me)
    await until(lambda: bool(released))
    assert engine.closed


def test_every_follower_cut_is_told() -> None:
    flight = Flight(max_lag_bytes=LAG)
    told: list[bool] = []
    flight.on_cut = lambda: told.append(True)
    flight.followers = 3
    slow, slower, quick = object(), object(), object()
    flight.positions.update({slow: 0, slower: 0, quick: 0})
    flight.stop_keeping()
    for _ in range(LAG // len(BATCH) * 2):
        flight.publish(BATCH)
        flight.positions[quick] = flight.end
    assert flight.cut == {slow, slower} and len(told) == 2
