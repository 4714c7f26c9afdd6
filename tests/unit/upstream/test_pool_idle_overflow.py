"""A health probe may open a connection past the pool's overall limit (probes never
wait) and leave it idle; a slot freed later must still reach a request waiting for an
engine under its cap, the idle connection closed to make room (review: the waiter got
EngineBusy with its engine holding no connection at all)."""

from __future__ import annotations

import asyncio

from gateway.upstream.connection import EngineConnection
from gateway.upstream.connection_pool import ConnectionPool
from gateway.upstream.target import Target
from tests.helpers.waiting import until
from tests.unit.upstream.scripted_engine import ScriptedEngine, Seen, ok


async def _answers(_: Seen, writer: asyncio.StreamWriter) -> None:
    writer.write(ok(b"{}"))


def _target(engine: ScriptedEngine) -> Target:
    return Target.parse(engine.url + "/v1/completions")


async def _answered(pool: ConnectionPool, conn: EngineConnection) -> None:
    try:
        conn.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await conn.body(conn.loop.time() + 5.0)
    finally:
        pool.release(conn)


async def test_an_idle_probe_connection_past_the_limit_makes_room_for_a_waiter() -> None:
    a, b, c = (ScriptedEngine(_answers) for _ in range(3))
    for engine in (a, b, c):
        await engine.start()
    pool = ConnectionPool(limit=2, keepalive_s=30.0, per_origin=1)
    try:
        conn_a = await pool.connect(_target(a), 1.0)
        await pool.connect(_target(b), 1.0)
        probe = await pool.connect(_target(c), 1.0, wait=False)  # past the limit
        await _answered(pool, probe)  # reusable, nobody waits: idle (3 open, limit 2)
        waiter = asyncio.create_task(pool.connect(_target(a), 1.0))  # A at its cap
        await until(lambda: pool.waiting(_target(a).origin) == 1)
        conn_a.close()  # A's request ends, its connection not reusable
        pool.release(conn_a)
        got = await waiter  # A holds none; only the idle probe connection was in the way
        assert got.origin == _target(a).origin and not got.closed
        assert pool.held(_target(c).origin) == 0  # the idle one was closed for it
    finally:
        pool.close()
        for engine in (a, b, c):
            await engine.stop()
