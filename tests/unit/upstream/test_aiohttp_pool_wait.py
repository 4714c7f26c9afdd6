"""The aiohttp client tells a full pool apart from an unreachable engine: a request that
waits for a free connection longer than ``connect_s``, or past its own deadline (a
``ttft_s``/``total_s`` shorter than ``connect_s``), fails as :class:`EngineBusy` (the
forwarder answers 503 ``overloaded`` and leaves the engine alone), never as
:class:`EngineUnreachable` nor as the engine's timeout; a connect that fails is still
unreachable; health probes never queue behind requests; every request hands its slot
back, however it ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamStatusError
from gateway.upstream.client import UpstreamClient
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.transport import EngineBusy, EngineUnreachable
from tests.helpers.processes import free_port
from tests.helpers.waiting import until
from tests.unit.upstream.scripted_engine import ScriptedEngine, Seen, chunked, ok

CONNECT_BOUND = Deadlines(connect_s=0.3, ttft_s=None, idle_s=30.0, total_s=None)
TTFT_BOUND = Deadlines(connect_s=30.0, ttft_s=0.3, idle_s=30.0, total_s=None)
TOTAL_BOUND = Deadlines(connect_s=30.0, ttft_s=None, idle_s=30.0, total_s=0.3)


@dataclass
class FullPool:
    """A client whose one connection is held by a request to a hung engine."""

    client: UpstreamClient
    engine: ScriptedEngine


@pytest.fixture
async def full_pool() -> AsyncIterator[FullPool]:
    unhang = asyncio.Event()

    async def hangs_but_probes(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if not seen.head.startswith(b"GET /health "):
            await unhang.wait()
        writer.write(ok(b"{}"))

    engine = ScriptedEngine(hangs_but_probes)
    await engine.start()
    client = UpstreamClient(UpstreamSettings(client="aiohttp", max_connections=1))
    await client.start()
    held = asyncio.create_task(client.post(engine.url, b"{}", {}, CONNECT_BOUND))
    try:
        await until(lambda: len(engine.requests) == 1)
        yield FullPool(client, engine)
    finally:
        unhang.set()
        await asyncio.gather(held, return_exceptions=True)
        await client.close()
        await engine.stop()


async def test_a_full_pool_is_waited_on_at_most_connect_s_then_busy(full_pool: FullPool) -> None:
    client, url = full_pool.client, full_pool.engine.url
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(EngineBusy, match="max_connections = 1"):
        await asyncio.wait_for(client.post(url, b"{}", {}, CONNECT_BOUND), 5.0)
    with pytest.raises(EngineBusy):
        await asyncio.wait_for(client.open_stream(url, b"{}", {}, CONNECT_BOUND), 5.0)
    assert loop.time() - start < 2 * 0.3 + 1.0
    assert len(full_pool.engine.requests) == 1  # neither reached the engine


@pytest.mark.parametrize("limits", [TTFT_BOUND, TOTAL_BOUND], ids=["ttft", "total"])
async def test_a_wait_for_a_full_pool_ends_busy_before_the_requests_own_deadline(
    full_pool: FullPool, limits: Deadlines
) -> None:
    """The first event (or whole answer) is due within 0.3 s, ``connect_s`` is 30 s: the
    wait for the pool ends by the request's own deadline, as busy, not as the request's
    (the engine's) timeout. (Not raced against a 0.3 s timeout of the test's own: the
    wait ends 5 ms before it, which a loaded test machine can swallow.)"""
    client, url = full_pool.client, full_pool.engine.url
    loop = asyncio.get_running_loop()
    for request in (client.post, client.open_stream):
        start = loop.time()
        with pytest.raises(EngineBusy):
            async with asyncio.timeout(10.0):
                await request(url, b"{}", {}, limits)
        waited = loop.time() - start
        assert 0.3 - 0.05 < waited < 5.0, waited  # its own deadline, never connect_s
    assert len(full_pool.engine.requests) == 1


async def test_probes_never_wait_for_a_full_pool(full_pool: FullPool) -> None:
    assert await asyncio.wait_for(full_pool.client.probe(full_pool.engine.url), 1.0)


async def test_an_engine_that_refuses_connections_is_unreachable_not_busy() -> None:
    client = UpstreamClient(UpstreamSettings(client="aiohttp", max_connections=1))
    await client.start()
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        for request in (client.post, client.open_stream):
            with pytest.raises(EngineUnreachable) as caught:
                await request(dead, b"{}", {}, CONNECT_BOUND)
            assert not isinstance(caught.value, EngineBusy)
    finally:
        await client.close()


async def test_every_request_hands_its_slot_back_however_it_ends() -> None:
    async def by_path(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if seen.head.startswith(b"POST /stream "):
            writer.write(chunked(b"data: 1\n\n", b"data: [DONE]\n\n"))
        elif seen.head.startswith(b"POST /fails "):
            writer.write(ok(b'{"error": "no"}', status=b"500 Internal Server Error"))
        else:
            writer.write(ok(b"{}"))

    engine = ScriptedEngine(by_path)
    await engine.start()
    client = UpstreamClient(UpstreamSettings(client="aiohttp", max_connections=1))
    await client.start()
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        stream = await client.open_stream(f"{engine.url}/stream", b"{}", {}, CONNECT_BOUND)
        await stream.prime()
        stream.close()
        stream.close()  # (twice: still one slot back)
        read = await client.open_stream(f"{engine.url}/stream", b"{}", {}, CONNECT_BOUND)
        assert await read.next_batch() == b"data: 1\n\ndata: [DONE]\n\n"
        assert await read.next_batch() is None
        read.close()
        with pytest.raises(UpstreamStatusError):
            await client.open_stream(f"{engine.url}/fails", b"{}", {}, CONNECT_BOUND)
        with pytest.raises(UpstreamError):  # a whole answer, not events
            await client.open_stream(f"{engine.url}/ok", b"{}", {}, CONNECT_BOUND)
        with pytest.raises(EngineUnreachable):
            await client.open_stream(dead, b"{}", {}, CONNECT_BOUND)
        with pytest.raises(EngineUnreachable):
            await client.post(dead, b"{}", {}, CONNECT_BOUND)
        assert (await client.post(f"{engine.url}/fails", b"{}", {}, CONNECT_BOUND)).status == 500
        for _ in range(2):  # the one slot is free each time (else EngineBusy)
            reply = await client.post(f"{engine.url}/ok", b"{}", {}, CONNECT_BOUND)
            assert reply.status == 200
    finally:
        await client.close()
        await engine.stop()
