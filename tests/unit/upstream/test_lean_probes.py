"""Health probes and metrics scrapes on the lean client: GETs over the same pool,
each bounded by PROBE_TIMEOUT_S, every failure a plain False or None; and a gateway
on this client never loads aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.upstream import lean
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.lean import LeanUpstream
from tests.helpers.fresh_app import after_building_the_app
from tests.helpers.processes import free_port
from tests.unit.upstream.scripted_engine import Answer, ScriptedEngine, Seen, ok

LIMITS = Deadlines(connect_s=1.0, ttft_s=None, idle_s=0.3, total_s=None)


@pytest.fixture
async def upstream() -> AsyncIterator[LeanUpstream]:
    client = LeanUpstream(UpstreamSettings())
    await client.start()
    yield client
    await client.close()


async def _engine(answer: Answer) -> ScriptedEngine:
    engine = ScriptedEngine(answer)
    await engine.start()
    return engine


def _answers(raw: bytes) -> Answer:
    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()

    return answer


async def test_a_probe_is_a_get_of_health_on_a_pooled_connection(upstream: LeanUpstream) -> None:
    engine = await _engine(_answers(ok(b"")))
    try:
        url = engine.url.replace("http://", "http://user:pw@")
        assert await upstream.probe(url, {"X-Probe": "1"})
        assert await upstream.probe(url)
        assert (await upstream.post(url + "/v1/x", b"{}", {}, LIMITS)).status == 200
        assert engine.connections == 1  # probes and requests share the pool
        first = engine.requests[0]
        assert first.head.startswith(b"GET /health HTTP/1.1\r\n")
        assert first.header("host") == engine.url.removeprefix("http://")
        assert first.header("authorization") == "Basic dXNlcjpwdw=="  # user:pw
        assert first.header("x-probe") == "1"
        assert first.header("content-length") is None and first.body == b""
    finally:
        await engine.stop()


async def test_a_probe_fails_on_an_error_status_a_refusal_or_a_line_break(
    upstream: LeanUpstream,
) -> None:
    engine = await _engine(_answers(ok(b"{}", status=b"503 Service Unavailable")))
    try:
        assert not await upstream.probe(engine.url)
        assert not await upstream.probe(engine.url, {"X-Bad": "a\r\nInjected: 1"})
        assert len(engine.requests) == 1  # the bad header never left
    finally:
        await engine.stop()
    assert not await upstream.probe(f"http://127.0.0.1:{free_port()}")
    assert not await upstream.probe("not a url")


async def test_a_silent_engine_fails_the_probe_within_its_timeout(
    upstream: LeanUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lean, "PROBE_TIMEOUT_S", 0.2)

    async def silent(_: Seen, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    engine = await _engine(silent)
    try:
        started = asyncio.get_running_loop().time()
        assert not await upstream.probe(engine.url)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert await upstream.fetch_text(engine.url + "/metrics") is None
    finally:
        await engine.stop()


async def test_fetch_text_returns_a_200_body_as_text_and_none_otherwise(
    upstream: LeanUpstream,
) -> None:
    metrics = "vllm:num_requests_waiting 2.0\n# µ\n"
    engine = await _engine(_answers(ok(metrics.encode())))
    try:
        assert await upstream.fetch_text(engine.url + "/metrics") == metrics
        assert engine.requests[0].head.startswith(b"GET /metrics HTTP/1.1\r\n")
    finally:
        await engine.stop()
    for raw in (ok(b"nope", status=b"404 Not Found"), ok(b"\xff\xfe")):
        engine = await _engine(_answers(raw))
        try:
            assert await upstream.fetch_text(engine.url + "/metrics") is None
        finally:
            await engine.stop()


def test_a_gateway_on_the_lean_client_never_loads_aiohttp() -> None:
    assert after_building_the_app("'aiohttp' in sys.modules") == "False"


async def test_a_probe_does_not_queue_behind_requests_holding_every_connection() -> None:
    held = asyncio.Event()

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if seen.head.startswith(b"GET "):
            writer.write(ok(b""))
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await held.wait()  # the stream stays open: the pool's one connection is busy

    client = LeanUpstream(UpstreamSettings(max_connections=1))
    engine = await _engine(answer)
    try:
        stream = await client.open_stream(engine.url + "/v1/chat/completions", b"{}", {}, LIMITS)
        assert await client.probe(engine.url)  # the engine is busy, not down
        assert await client.fetch_text(engine.url + "/metrics") == ""
        stream.close()
    finally:
        held.set()
        await client.close()
        await engine.stop()
