"""Every way a completion request can end leaves nothing held.

Each test drives the real pipeline (:mod:`tests.unit.pipeline.world`) down one
exit path — answered, refused, engine error, timeout, stream broken, and the
client leaving while queued, while waiting for its engine, while following an
identical request or while streaming — then checks that no engine slot, open
stream, flight, concurrency slot or in-flight count is left behind, and that the
key can be used again at once (it has one concurrent request).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.errors import (
    GatewayError,
    OverloadedError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from gateway.pipeline.results import Answer, EventStream, Replay
from gateway.upstream.fake import FakeRequest, Scripted, sse
from tests.unit.pipeline.world import (
    STREAM_EVENTS,
    World,
    chat_body,
    chunk,
    completion,
    drain,
    until,
    world,
)


def answers(_: FakeRequest) -> Scripted:
    return Scripted(body=completion(), events=STREAM_EVENTS)


async def still_usable(w: World) -> None:
    """The key's single concurrency slot is free: a fresh request gets through."""
    result = await w.ask(chat_body(), cache_control="no-cache")
    assert isinstance(result, Answer)
    w.assert_nothing_held()


async def test_answered() -> None:
    w = world(answers)
    result = await w.ask(chat_body())
    assert isinstance(result, Answer) and result.status == 200
    assert orjson.loads(result.body)["choices"][0]["message"]["content"] == "hello"
    assert (b"x-cache", b"MISS") in result.headers
    w.assert_nothing_held()
    await still_usable(w)


async def test_streamed_to_the_end() -> None:
    w = world(answers)
    result = await w.ask(chat_body(stream=True))
    assert isinstance(result, EventStream)
    body = await drain(result)
    assert body.endswith(b"data: [DONE]\n\n") and b'"usage"' not in body  # not asked for
    w.assert_nothing_held()
    await still_usable(w)


async def test_cache_hit_is_replayed() -> None:
    w = world(answers)
    await w.ask(chat_body())
    result = await w.ask(chat_body())
    assert isinstance(result, Replay)
    assert len(w.upstream.requests) == 1
    w.assert_nothing_held()


async def test_refused_by_the_rate_limit() -> None:
    gate = asyncio.Event()
    w = world(lambda _: Scripted(body=completion(), gate=gate))
    first = asyncio.create_task(w.ask(chat_body(), cache_control="no-cache"))
    await until(lambda: len(w.upstream.requests) == 1)
    with pytest.raises(RateLimitError):
        await w.ask(chat_body(), cache_control="no-cache")
    gate.set()
    assert isinstance(await first, Answer)
    w.assert_nothing_held()


async def test_engine_error_on_every_engine() -> None:
    w = world(lambda _: Scripted(status=500, body=b'{"error": "boom"}'))
    with pytest.raises(UpstreamStatusError) as caught:
        await w.ask(chat_body())
    assert len(w.upstream.requests) == 2  # tried the other engine once
    assert caught.value.headers.get("X-Cache") == "MISS"
    w.assert_nothing_held()
    w.upstream.handler = answers
    await still_usable(w)


async def test_engine_unreachable_then_the_other_answers() -> None:
    w = world(lambda r: Scripted(unreachable=True) if "engine-a" in r.url else answers(r))
    for _ in range(2):  # whichever engine the policy picks first
        result = await w.ask(chat_body(), cache_control="no-cache")
        assert isinstance(result, Answer)
    w.assert_nothing_held()


async def test_stream_refused_by_the_engine() -> None:
    w = world(lambda _: Scripted(status=400, body=b'{"error": {"message": "bad"}}'))
    with pytest.raises(UpstreamStatusError):
        await w.ask(chat_body(stream=True))
    w.assert_nothing_held()


async def test_first_event_timeout() -> None:
    never = asyncio.Event()
    w = world(
        lambda _: Scripted(events=STREAM_EVENTS, gate=never),
        upstream={"retries": 1, "ttft_timeout_s": 0.05},
    )
    with pytest.raises(UpstreamTimeoutError):
        await w.ask(chat_body(stream=True))
    w.assert_nothing_held()


async def test_answer_timeout() -> None:
    async def slow(_: FakeRequest) -> Scripted:
        raise UpstreamTimeoutError("the engine did not answer within total_s = 1 s")

    w = world(slow)
    with pytest.raises(UpstreamTimeoutError):
        await w.ask(chat_body())
    w.assert_nothing_held()


async def test_stream_breaks_part_way() -> None:
    w = world(lambda _: Scripted(events=STREAM_EVENTS, break_after=1))
    result = await w.ask(chat_body(stream=True))
    assert isinstance(result, EventStream)
    with pytest.raises(UpstreamError):
        await drain(result)
    w.assert_nothing_held()
    w.upstream.handler = answers
    result = await w.ask(chat_body(stream=True))  # the broken answer was not cached
    assert isinstance(result, EventStream)
    await drain(result)
    w.assert_nothing_held()


async def test_stream_ends_without_done() -> None:
    w = world(lambda _: Scripted(events=(sse(chunk("hel"), done=False),)))
    result = await w.ask(chat_body(stream=True))
    assert isinstance(result, EventStream)
    with pytest.raises(UpstreamError, match="before it was complete"):
        await drain(result)
    w.assert_nothing_held()


async def test_client_leaves_while_waiting_for_the_engine() -> None:
    never = asyncio.Event()
    w = world(lambda _: Scripted(body=completion(), gate=never))
    task = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: len(w.upstream.requests) == 1)
    assert [s.in_flight for s in w.pool.states()].count(1) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    w.assert_nothing_held()
    w.upstream.handler = answers
    await still_usable(w)


async def test_client_leaves_before_the_first_event() -> None:
    never = asyncio.Event()
    w = world(lambda _: Scripted(events=STREAM_EVENTS, gate=never))
    task = asyncio.create_task(w.ask(chat_body(stream=True)))
    await until(lambda: len(w.upstream.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    w.assert_nothing_held()


async def test_client_leaves_while_streaming() -> None:
    more = asyncio.Event()
    w = world(lambda _: Scripted(events=STREAM_EVENTS, gate=more, gate_each_batch=True))
    result = await w.ask(chat_body(stream=True))
    assert isinstance(result, EventStream)
    first = await anext(result.events)
    assert b"hel" in first
    assert len(w.upstream.open_streams) == 1
    result.close()  # what the HTTP edge does when the client hangs up
    w.assert_nothing_held()
    more.set()
    w.upstream.handler = answers
    await still_usable(w)


async def test_client_leaves_while_queued() -> None:
    gate = asyncio.Event()
    overload = {"max_in_flight": 1, "queue_size": 4, "queue_timeout_s": 5.0}
    w = world(
        lambda _: Scripted(body=completion(), gate=gate),
        overload=overload,
        auth={"enabled": False},
    )
    busy = [asyncio.create_task(w.ask(chat_body(), cache_control="no-store")) for _ in range(2)]
    await until(lambda: len(w.upstream.requests) == 2)  # both engines now full
    queued = asyncio.create_task(w.ask(chat_body(), cache_control="no-store"))
    await until(lambda: w.metrics.registry.get_sample_value(
        "vgate_admission_queue_depth", {"model": "m"}) == 1.0)  # fmt: skip
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    gate.set()
    for task in busy:
        assert isinstance(await task, Answer)
    w.assert_nothing_held()


async def test_shed_when_the_queue_is_full() -> None:
    gate = asyncio.Event()
    overload = {"max_in_flight": 1, "queue_size": 0}
    w = world(
        lambda _: Scripted(body=completion(), gate=gate),
        overload=overload,
        auth={"enabled": False},
    )
    busy = [asyncio.create_task(w.ask(chat_body(), cache_control="no-store")) for _ in range(2)]
    await until(lambda: len(w.upstream.requests) == 2)
    with pytest.raises(OverloadedError):
        await w.ask(chat_body(), cache_control="no-store")
    gate.set()
    await asyncio.gather(*busy)
    w.assert_nothing_held()


async def test_follower_whose_client_leaves_frees_its_slot() -> None:
    """The regression of issue #12: a follower cancelled while it waits on the leader
    used to keep its concurrency slot until the lease expired."""
    gate = asyncio.Event()
    w = world(
        lambda _: Scripted(body=completion(), gate=gate),
        auth={
            "enabled": True,
            "keys": [{"name": "team", "key": "sk-test-0123456789", "max_concurrent": 2}],
        },
    )
    leader = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: len(w.upstream.requests) == 1)
    follower = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: w.admission.leased == 2)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    assert w.admission.leased == 1  # the follower's slot is free at once
    gate.set()
    assert isinstance(await leader, Answer)
    w.assert_nothing_held()
    fresh = await asyncio.gather(
        *(w.ask(chat_body(), cache_control="no-cache") for _ in range(2)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Answer) for r in fresh), fresh


async def test_streaming_follower_gets_the_leaders_answer() -> None:
    more = asyncio.Event()
    w = world(lambda _: Scripted(events=STREAM_EVENTS, gate=more, gate_each_batch=True),
              auth={"enabled": False})  # fmt: skip
    leader = await w.ask(chat_body(stream=True))
    assert isinstance(leader, EventStream)
    sending = asyncio.create_task(drain(leader))  # the leader's client reads as it comes
    follower = await asyncio.wait_for(w.ask(chat_body(stream=True)), 1)
    assert isinstance(follower, EventStream)
    more.set()
    leader_body, follower_body = await asyncio.gather(sending, drain(follower))
    assert leader_body.endswith(b"data: [DONE]\n\n") and follower_body.endswith(b"[DONE]\n\n")
    assert b"hel" in follower_body and b"lo" in follower_body
    assert len(w.upstream.requests) == 1
    w.assert_nothing_held()


async def test_streaming_follower_whose_leader_breaks() -> None:
    more = asyncio.Event()
    w = world(
        lambda _: Scripted(events=STREAM_EVENTS, break_after=2, gate=more, gate_each_batch=True),
        auth={"enabled": False},
    )
    leader = await w.ask(chat_body(stream=True))
    assert isinstance(leader, EventStream)
    sending = asyncio.create_task(drain(leader))
    follower = await asyncio.wait_for(w.ask(chat_body(stream=True)), 1)
    assert isinstance(follower, EventStream)
    more.set()
    outcomes = await asyncio.gather(sending, drain(follower), return_exceptions=True)
    assert all(isinstance(o, GatewayError) for o in outcomes), outcomes
    w.assert_nothing_held()


async def test_streaming_follower_whose_client_leaves() -> None:
    more = asyncio.Event()
    w = world(lambda _: Scripted(events=STREAM_EVENTS, gate=more, gate_each_batch=True),
              auth={"enabled": False})  # fmt: skip
    leader = await w.ask(chat_body(stream=True))
    assert isinstance(leader, EventStream)
    sending = asyncio.create_task(drain(leader))
    follower = await asyncio.wait_for(w.ask(chat_body(stream=True)), 1)
    assert isinstance(follower, EventStream)
    follower.close()  # its client hung up before reading anything
    more.set()
    assert (await sending).endswith(b"[DONE]\n\n")
    w.assert_nothing_held()


async def test_leader_failure_sends_waiting_followers_to_the_engine() -> None:
    gate = asyncio.Event()
    calls = 0

    def first_fails(_: FakeRequest) -> Scripted:
        nonlocal calls
        calls += 1
        if calls <= 2:  # the leader, on both engines
            return Scripted(status=503, body=b"{}", gate=gate)
        return Scripted(body=completion())

    w = world(first_fails, auth={"enabled": False})
    leader = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: len(w.upstream.requests) == 1)
    follower = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: len(w.service.flights) == 1 and follower_waiting(w))
    gate.set()
    with pytest.raises(UpstreamStatusError):
        await leader
    assert isinstance(await follower, Answer)  # made its own call
    w.assert_nothing_held()


def follower_waiting(w: World) -> bool:
    flights = list(w.service.flights.under_way())
    return bool(flights) and flights[0].followers == 1
