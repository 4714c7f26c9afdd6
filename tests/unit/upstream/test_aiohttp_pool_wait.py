"""The aiohttp client bounds a wait for a free pooled connection by ``connect_s``
too: with its pool full of requests to a hung engine, another request fails as
unreachable (so the forwarder fails over) instead of waiting for ever."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.upstream.client import UpstreamClient
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.transport import EngineUnreachable
from tests.helpers.waiting import until
from tests.unit.upstream.scripted_engine import ScriptedEngine, Seen, ok

LIMITS = Deadlines(connect_s=0.3, ttft_s=None, idle_s=30.0, total_s=None)


async def test_a_full_pool_is_waited_on_at_most_connect_s() -> None:
    unhang = asyncio.Event()

    async def hangs(_: Seen, writer: asyncio.StreamWriter) -> None:
        await unhang.wait()
        writer.write(ok(b"{}"))

    engine = ScriptedEngine(hangs)
    await engine.start()
    client = UpstreamClient(UpstreamSettings(client="aiohttp", max_connections=1))
    await client.start()
    held = asyncio.create_task(client.post(engine.url, b"{}", {}, LIMITS))
    try:
        await until(lambda: len(engine.requests) == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(EngineUnreachable):
            await asyncio.wait_for(client.post(engine.url, b"{}", {}, LIMITS), 5.0)
        with pytest.raises(EngineUnreachable):
            await asyncio.wait_for(client.open_stream(engine.url, b"{}", {}, LIMITS), 5.0)
        assert loop.time() - start < 2 * 0.3 + 1.0
    finally:
        unhang.set()
        await asyncio.gather(held, return_exceptions=True)
        await client.close()
        await engine.stop()
