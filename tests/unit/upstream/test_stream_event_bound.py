"""An engine that sends one ``data:`` line without end, as fast as it can, over real
sockets to both streaming clients: the stream fails with the framer's bound
(``larger than 32 MiB``) after one event's worth of bytes, not when the engine stops
(the slow variant, a line that trickles, ends by ``read_timeout_s``: see
``tests/integration/test_engine_stream_framing.py``)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.lean import LeanUpstream
from gateway.upstream.sse_framing import MAX_EVENT_BYTES
from tests.unit.upstream.scripted_engine import ScriptedEngine, Seen, chunk_of

HEADERS = {"Content-Type": "application/json", "X-Request-Id": "vgate-1"}
LIMITS = Deadlines(connect_s=1.0, ttft_s=None, idle_s=5.0, total_s=None)
PIECE = b"x" * (256 * 1024)


async def _endless_line_engine(sent: list[int]) -> ScriptedEngine:
    """An SSE answer with a good first event, then a ``data:`` line that never ends;
    ``sent`` counts the bytes of it written."""

    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        writer.write(chunk_of(b'data: {"n": 1}\n\ndata: {"n": "'))
        piece = chunk_of(PIECE)
        while not writer.is_closing():
            writer.write(piece)
            sent.append(len(PIECE))
            await writer.drain()

    engine = ScriptedEngine(answer)
    await engine.start()
    return engine


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_an_event_that_never_ends_fails_at_the_bound(client: str) -> None:
    from gateway.upstream import client as aiohttp_client

    settings = UpstreamSettings()
    upstream: LeanUpstream | aiohttp_client.UpstreamClient = (
        LeanUpstream(settings) if client == "lean" else aiohttp_client.UpstreamClient(settings)
    )
    await upstream.start()
    sent: list[int] = []
    engine = await _endless_line_engine(sent)
    try:
        stream = await upstream.open_stream(
            engine.url + "/v1/chat/completions", b"{}", HEADERS, LIMITS
        )
        try:
            await stream.prime()
            assert await stream.next_batch() == b'data: {"n": 1}\n\n'
            with pytest.raises(UpstreamError, match="an event larger than 32 MiB"):
                await stream.next_batch()
        finally:
            stream.close()
        # It failed once the line passed the bound (what the sockets' buffers hold
        # besides), not at some later point: the memory held is one event's.
        assert MAX_EVENT_BYTES < sum(sent) < MAX_EVENT_BYTES + 16 * 1024 * 1024
    finally:
        await upstream.close()
        await engine.stop()
