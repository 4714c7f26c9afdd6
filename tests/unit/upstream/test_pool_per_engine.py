"""The pool's per-engine cap: a hung engine (requests taken, never answered) holds at
most ``max_connections_per_engine`` connections, requests to other engines still get
theirs, a request waits for room at most ``connect_s``, and every slot or connection
that frees goes to a waiter that can use it, even when a waiter gives up as it is
handed one. Real sockets to local servers (:class:`ScriptedEngine`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from gateway.config.upstream import UpstreamSettings
from gateway.upstream.connection import EngineConnection
from gateway.upstream.connection_pool import ConnectionPool
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.lean import LeanUpstream
from gateway.upstream.target import Target
from gateway.upstream.transport import EngineBusy
from tests.helpers.waiting import until
from tests.unit.upstream.scripted_engine import ScriptedEngine, Seen, ok

CONNECT_S = 0.3
LIMITS = Deadlines(connect_s=CONNECT_S, ttft_s=None, idle_s=5.0, total_s=None)


class Engines:
    """A hung engine (answers only once the test ends) and a healthy one."""

    def __init__(self) -> None:
        self.unhang = asyncio.Event()

        async def hangs(_: Seen, writer: asyncio.StreamWriter) -> None:
            await self.unhang.wait()
            writer.write(ok(b"{}"))

        async def answers(_: Seen, writer: asyncio.StreamWriter) -> None:
            writer.write(ok(b"{}"))

        self.healthy_handler = answers
        self.hung = ScriptedEngine(hangs)
        self.healthy = ScriptedEngine(answers)

    async def start(self) -> None:
        await self.hung.start()
        await self.healthy.start()

    async def stop(self) -> None:
        self.unhang.set()
        await self.hung.stop()
        await self.healthy.stop()


@pytest.fixture
async def engines() -> AsyncIterator[Engines]:
    made = Engines()
    await made.start()
    yield made
    await made.stop()


def _target(engine: ScriptedEngine) -> Target:
    return Target.parse(engine.url + "/v1/completions")


async def _answered(pool: ConnectionPool, conn: EngineConnection) -> None:
    """Send one request on ``conn``, read its answer, hand the connection back."""
    try:
        conn.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await conn.body(conn.loop.time() + 5.0)
    finally:
        pool.release(conn)


async def _elapsed(since: float) -> float:
    return asyncio.get_running_loop().time() - since


async def test_a_hung_engine_holds_its_cap_and_the_others_still_get_connections(
    engines: Engines,
) -> None:
    upstream = LeanUpstream(UpstreamSettings(max_connections=4, max_connections_per_engine=2))
    hung = [
        asyncio.create_task(upstream.post(engines.hung.url, b"{}", {}, LIMITS)) for _ in range(4)
    ]
    try:
        await until(lambda: len(engines.hung.requests) == 2)
        for stream in (False, True):  # streams and whole answers alike
            loop = asyncio.get_running_loop()
            start = loop.time()
            if stream:
                opened = upstream.open_stream(engines.hung.url, b"{}", {}, LIMITS)
                with pytest.raises(EngineBusy, match="no free connection"):
                    await asyncio.wait_for(opened, 5.0)
            reply = await asyncio.wait_for(
                upstream.post(engines.healthy.url, b"{}", {}, LIMITS), 5.0
            )
            assert reply.status == 200
            assert await _elapsed(start) < CONNECT_S + 1.0
        # The two over the hung engine's cap gave up within connect_s, as unreachable.
        done, _ = await asyncio.wait(hung, timeout=CONNECT_S + 2.0)
        assert len(done) == 2
        for task in done:
            with pytest.raises(EngineBusy, match="max_connections_per_engine = 2"):
                task.result()
        assert len(engines.hung.requests) == 2 and engines.hung.connections == 2
    finally:
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        await upstream.close()


async def test_a_freed_connection_goes_to_a_waiter_of_its_engine_not_to_one_over_its_cap(
    engines: Engines,
) -> None:
    pool = ConnectionPool(limit=2, keepalive_s=4.0, per_origin=1)
    hung, healthy = _target(engines.hung), _target(engines.healthy)
    first_hung = await pool.connect(hung, CONNECT_S)
    first_healthy = await pool.connect(healthy, CONNECT_S)
    try:
        second_hung = asyncio.create_task(pool.connect(hung, 5.0))  # waits first
        second_healthy = asyncio.create_task(pool.connect(healthy, 5.0))
        await until(lambda: pool.waiting(hung.origin) == pool.waiting(healthy.origin) == 1)
        await _answered(pool, first_healthy)  # reusable: handed over as it is
        assert await asyncio.wait_for(second_healthy, 2.0) is first_healthy
        assert not second_hung.done() and pool.held(hung.origin) == 1
        second_hung.cancel()
    finally:
        first_hung.close()
        pool.close()


async def test_a_closed_connection_frees_a_slot_for_the_engine_under_its_cap(
    engines: Engines,
) -> None:
    pool = ConnectionPool(limit=2, keepalive_s=4.0, per_origin=1)
    hung, healthy = _target(engines.hung), _target(engines.healthy)
    first_hung = await pool.connect(hung, CONNECT_S)
    first_healthy = await pool.connect(healthy, CONNECT_S)
    try:
        second_hung = asyncio.create_task(pool.connect(hung, 5.0))
        second_healthy = asyncio.create_task(pool.connect(healthy, 5.0))
        await until(lambda: pool.waiting(hung.origin) == pool.waiting(healthy.origin) == 1)
        pool.release(first_healthy)  # no answer read: not reusable, closed
        replacement = await asyncio.wait_for(second_healthy, 2.0)
        assert replacement is not first_healthy and engines.healthy.connections == 2
        await _answered(pool, replacement)
        assert not second_hung.done()
        second_hung.cancel()
    finally:
        first_hung.close()
        pool.close()


@pytest.mark.parametrize("reusable", [True, False])
async def test_a_waiter_cancelled_as_it_is_handed_room_passes_it_on(
    engines: Engines, reusable: bool
) -> None:
    pool = ConnectionPool(limit=1, keepalive_s=4.0, per_origin=1)
    healthy = _target(engines.healthy)
    first = await pool.connect(healthy, CONNECT_S)
    try:
        if reusable:
            first.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await first.body(first.loop.time() + 5.0)
        leaving = asyncio.create_task(pool.connect(healthy, 5.0))
        staying = asyncio.create_task(pool.connect(healthy, 5.0))
        await until(lambda: pool.waiting(healthy.origin) == 2)
        pool.release(first)  # handed to `leaving` (connection or slot) ...
        leaving.cancel()  # ... which is cancelled before it runs again
        conn = await asyncio.wait_for(staying, 2.0)
        assert (conn is first) is reusable
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert pool.held(healthy.origin) == 1 and pool.waiting(healthy.origin) == 0
        await _answered(pool, conn)
    finally:
        pool.close()


async def test_a_connection_handed_over_then_closed_by_the_engine_is_replaced(
    engines: Engines,
) -> None:
    pool = ConnectionPool(limit=1, keepalive_s=4.0, per_origin=1)
    healthy = _target(engines.healthy)
    first = await pool.connect(healthy, CONNECT_S)
    try:
        first.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await first.body(first.loop.time() + 5.0)
        waiting = asyncio.create_task(pool.connect(healthy, 5.0))
        await until(lambda: pool.waiting(healthy.origin) == 1)
        pool.release(first)  # handed to the waiter ...
        first.close()  # ... and closed before it runs again (the engine's idle timeout)
        conn = await asyncio.wait_for(waiting, 2.0)
        assert conn is not first and conn.open() and engines.healthy.connections == 2
        assert pool.held(healthy.origin) == 1
        await _answered(pool, conn)
    finally:
        pool.close()


async def test_waiting_is_bounded_by_connect_s_and_leaves_nothing_behind(
    engines: Engines,
) -> None:
    pool = ConnectionPool(limit=8, keepalive_s=4.0, per_origin=1)
    hung = _target(engines.hung)
    first = await pool.connect(hung, CONNECT_S)
    try:
        start = asyncio.get_running_loop().time()
        with pytest.raises(EngineBusy, match=r"within 0\.3 s \(connect_timeout_s"):
            await asyncio.wait_for(pool.connect(hung, CONNECT_S), 5.0)
        assert CONNECT_S <= await _elapsed(start) < CONNECT_S + 1.0
        assert pool.waiting(hung.origin) == 0 and pool.held(hung.origin) == 1
        pool.release(first)  # the slot is free again: the next one connects at once
        second = await asyncio.wait_for(pool.connect(hung, CONNECT_S), 2.0)
        assert pool.held(hung.origin) == 1
        second.close()
    finally:
        pool.close()


async def test_probes_never_wait_even_past_the_engines_cap(engines: Engines) -> None:
    pool = ConnectionPool(limit=1, keepalive_s=4.0, per_origin=1)
    hung = _target(engines.hung)
    first = await pool.connect(hung, CONNECT_S)
    try:
        probe = await asyncio.wait_for(pool.connect(hung, CONNECT_S, wait=False), 2.0)
        assert probe is not first and pool.held(hung.origin) == 2
        probe.close()
        first.close()
        await until(lambda: pool.held(hung.origin) == 0)
    finally:
        pool.close()


def test_the_per_engine_cap_defaults_to_half_the_pool_and_may_not_exceed_it() -> None:
    assert UpstreamSettings().engine_connection_limit == 1024
    assert UpstreamSettings(max_connections=1).engine_connection_limit == 1
    assert UpstreamSettings(max_connections_per_engine=8).engine_connection_limit == 8
    assert UpstreamSettings(max_connections=8, max_connections_per_engine=8)
    with pytest.raises(ValidationError, match=r"at most upstream\.max_connections"):
        UpstreamSettings(max_connections=8, max_connections_per_engine=9)


async def test_an_idle_probe_connection_past_the_limit_makes_room_for_a_waiter(
    engines: Engines,
) -> None:
    """A probe may open a connection past the overall limit (probes never wait) and
    leave it idle; a slot freed later must still reach a request waiting for an engine
    under its cap, the idle connection closed to make room (review: the waiter got
    EngineBusy with its engine holding no connection at all)."""
    third = ScriptedEngine(engines.healthy_handler)
    await third.start()
    pool = ConnectionPool(limit=2, keepalive_s=30.0, per_origin=1)
    a, b, c = _target(engines.healthy), _target(engines.hung), _target(third)
    try:
        conn_a = await pool.connect(a, 1.0)
        await pool.connect(b, 1.0)
        probe = await pool.connect(c, 1.0, wait=False)  # past the limit
        await _answered(pool, probe)  # reusable, nobody waits: idle (3 open, limit 2)
        waiter = asyncio.create_task(pool.connect(a, 1.0))  # at its engine's cap
        await until(lambda: pool.waiting(a.origin) == 1)
        conn_a.close()  # its request ends, the connection not reusable
        pool.release(conn_a)
        got = await waiter  # only the idle probe connection was in the way
        assert got.origin == a.origin and not got.closed
        assert pool.held(c.origin) == 0  # the idle one was closed for it
    finally:
        pool.close()
        await third.stop()


async def test_a_probe_connection_past_the_engines_cap_is_never_reused(
    engines: Engines,
) -> None:
    """A probe opens a connection even when its engine is at its cap; handed back, it is
    closed, not kept idle for the next request to take past the cap (hunt: a request
    got a third connection to an engine capped at two)."""
    pool = ConnectionPool(limit=8, keepalive_s=30.0, per_origin=1)
    target = _target(engines.healthy)
    try:
        busy = await pool.connect(target, 1.0)
        probe = await pool.connect(target, 1.0, wait=False)
        await _answered(pool, probe)
        assert probe.closed and pool.take_idle(target.origin) is None
        assert pool.held(target.origin) == 1
        await _answered(pool, busy)  # within the cap: kept for the next request
        assert pool.take_idle(target.origin) is busy
    finally:
        pool.close()


async def test_a_slot_handed_over_just_before_the_wait_ends_still_gets_to_connect() -> None:
    """Waiting and connecting have a budget each: a slot that comes 5 ms before the
    wait would end, on a loop busy for 20 ms just then, still connects (hunt: the
    connect's timeout, left with 5 ms, made a merely busy engine "unreachable": marked
    down and its breaker charged)."""
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    target = Target.parse(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/x")
    pool = ConnectionPool(limit=4, keepalive_s=4.0, per_origin=1)
    first = await pool.connect(target, 1.0)
    wait_s = 0.3

    def free_the_slot_on_a_busy_loop() -> None:
        first.close()  # its client left: not reusable, the slot goes to the waiter
        pool.release(first)
        time.sleep(0.02)  # the loop busy a moment (part of the scenario, not a wait)

    asyncio.get_running_loop().call_later(wait_s - 0.005, free_the_slot_on_a_busy_loop)
    try:
        conn = await pool.connect(target, wait_s)
        assert conn.open() and pool.held(target.origin) == 1
        conn.close()
        pool.release(conn)
    finally:
        pool.close()
        server.close()
