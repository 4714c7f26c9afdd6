"""The lean client against engines that answer in ways HTTP allows but vLLM does not:
interim ``1xx`` responses before the answer (skipped; ``101`` is an error) and bodies
in a content coding (every request says ``Accept-Encoding: identity``; an encoded
answer is an engine error, never a body to relay or cache). Real sockets: a local
:class:`ScriptedEngine` writes each answer byte by byte."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.lean import LeanUpstream
from tests.unit.upstream.scripted_engine import ScriptedEngine, Seen, chunk_of, chunked, ok

HEADERS = {"Content-Type": "application/json", "X-Request-Id": "vgate-1"}
LIMITS = Deadlines(connect_s=1.0, ttft_s=None, idle_s=1.0, total_s=None)
BODY = b'{"id": "after-interim"}'
EVENT = b'data: {"n": 1}\n\n'
DONE = b"data: [DONE]\n\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
EARLY_HINTS = (  # its headers are the interim's own, not the answer's
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
    b"Content-Type: text/html\r\nContent-Length: 99\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.fixture
async def upstream() -> AsyncIterator[LeanUpstream]:
    client = LeanUpstream(UpstreamSettings())
    await client.start()
    yield client
    await client.close()


async def _engine(*parts: bytes, pause: float = 0.0) -> ScriptedEngine:
    """An engine answering every request with ``parts``, written ``pause`` apart."""

    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)

    engine = ScriptedEngine(answer)
    await engine.start()
    return engine


async def _events(upstream: LeanUpstream, url: str) -> list[bytes]:
    stream = await upstream.open_stream(url, b"{}", HEADERS, LIMITS)
    try:
        await stream.prime()
        return [batch async for batch in stream.batches()]
    finally:
        stream.close()


# -- interim responses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "interim", [CONTINUE, EARLY_HINTS, CONTINUE + EARLY_HINTS], ids=["100", "103", "100+103"]
)
@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["together", "apart"])
async def test_interim_responses_are_skipped_for_the_answer(
    upstream: LeanUpstream, interim: bytes, pause: float
) -> None:
    engine = await _engine(interim, ok(BODY), pause=pause)
    try:
        for _ in range(2):  # and the connection stays usable
            reply = await upstream.post(engine.url + "/v1/chat/completions", b"{}", HEADERS, LIMITS)
            assert (reply.status, reply.content_type, reply.body) == (
                200,
                "application/json",
                BODY,
            )
        assert engine.connections == 1
    finally:
        await engine.stop()


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["together", "apart"])
async def test_a_stream_after_an_interim_response_is_relayed(
    upstream: LeanUpstream, pause: float
) -> None:
    engine = await _engine(CONTINUE, chunked(EVENT, DONE), pause=pause)
    try:
        assert b"".join(await _events(upstream, engine.url + "/v1/x")) == EVENT + DONE
    finally:
        await engine.stop()


async def test_an_error_status_after_an_interim_response_is_the_reply(
    upstream: LeanUpstream,
) -> None:
    engine = await _engine(CONTINUE, ok(b'{"error": "x"}', status=b"503 Service Unavailable"))
    try:
        reply = await upstream.post(engine.url + "/v1/x", b"{}", HEADERS, LIMITS)
        assert (reply.status, reply.body) == (503, b'{"error": "x"}')
    finally:
        await engine.stop()


@pytest.mark.parametrize("streamed", [False, True], ids=["answer", "stream"])
async def test_a_101_upgrade_is_an_engine_error(upstream: LeanUpstream, streamed: bool) -> None:
    engine = await _engine(SWITCHING, b"\x81\x05hello")
    try:
        with pytest.raises(UpstreamError, match="HTTP 101"):
            if streamed:
                await _events(upstream, engine.url + "/v1/x")
            else:
                await upstream.post(engine.url + "/v1/x", b"{}", HEADERS, LIMITS)
    finally:
        await engine.stop()


# -- content codings --------------------------------------------------------------------


async def test_requests_and_probes_ask_for_the_identity_coding(upstream: LeanUpstream) -> None:
    engine = await _engine(ok(b"{}"))
    try:
        await upstream.post(engine.url + "/v1/x", b"{}", HEADERS, LIMITS)
        assert await upstream.probe(engine.url)
        assert [seen.header("accept-encoding") for seen in engine.requests] == [
            "identity",
            "identity",
        ]
    finally:
        await engine.stop()


@pytest.mark.parametrize("coding", [b"gzip", b"br", b"GZIP", b"gzip, identity"])
async def test_an_encoded_answer_is_an_engine_error(upstream: LeanUpstream, coding: bytes) -> None:
    engine = await _engine(ok(gzip.compress(BODY), b"Content-Encoding: " + coding))
    try:
        with pytest.raises(UpstreamError, match="content coding"):
            await upstream.post(engine.url + "/v1/x", b"{}", HEADERS, LIMITS)
    finally:
        await engine.stop()


async def test_an_encoded_stream_is_an_engine_error(upstream: LeanUpstream) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    data = gzip.compress(EVENT + DONE)
    engine = await _engine(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
    try:
        with pytest.raises(UpstreamError, match="content coding 'gzip'"):
            await _events(upstream, engine.url + "/v1/x")
    finally:
        await engine.stop()


@pytest.mark.parametrize("coding", [b"identity", b"Identity", b""])
async def test_the_identity_coding_is_a_plain_body(upstream: LeanUpstream, coding: bytes) -> None:
    engine = await _engine(ok(BODY, b"Content-Encoding: " + coding))
    try:
        reply = await upstream.post(engine.url + "/v1/x", b"{}", HEADERS, LIMITS)
        assert (reply.status, reply.body) == (200, BODY)
    finally:
        await engine.stop()


# -- answers without end --------------------------------------------------------------


async def _endless_engine() -> ScriptedEngine:
    """An engine whose answer (chunked, no length) never ends: 1 KiB chunks until the
    client hangs up."""

    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b"transfer-encoding: chunked\r\n\r\n")
        piece = chunk_of(b"x" * 1024)
        while not writer.is_closing():
            writer.write(piece)
            await writer.drain()

    engine = ScriptedEngine(answer)
    await engine.start()
    return engine


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
async def test_an_answer_past_the_size_limit_is_an_engine_error(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.upstream import client as aiohttp_client
    from gateway.upstream import connection

    monkeypatch.setattr(connection, "MAX_ANSWER_BYTES", 64 * 1024)
    monkeypatch.setattr(aiohttp_client, "MAX_ANSWER_BYTES", 64 * 1024)
    settings = UpstreamSettings()
    upstream: LeanUpstream | aiohttp_client.UpstreamClient = (
        LeanUpstream(settings) if client == "lean" else aiohttp_client.UpstreamClient(settings)
    )
    await upstream.start()
    engine = await _endless_engine()
    try:
        with pytest.raises(UpstreamError, match="answer larger than"):
            await upstream.post(engine.url + "/v1/chat/completions", b"{}", HEADERS, LIMITS)
    finally:
        await upstream.close()
        await engine.stop()


# -- redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["lean", "aiohttp"])
@pytest.mark.parametrize("status", [b"301 Moved Permanently", b"307 Temporary Redirect"])
async def test_a_redirect_is_an_engine_error_and_never_followed(client: str, status: bytes) -> None:
    from gateway.upstream import client as aiohttp_client

    elsewhere = await _engine(ok(b'{"id": "elsewhere"}'))
    engine = await _engine(
        ok(b"", b"location: " + elsewhere.url.encode() + b"/v1/x", status=status)
    )
    settings = UpstreamSettings()
    upstream: LeanUpstream | aiohttp_client.UpstreamClient = (
        LeanUpstream(settings) if client == "lean" else aiohttp_client.UpstreamClient(settings)
    )
    await upstream.start()
    try:
        with pytest.raises(UpstreamError, match="a redirect"):
            await upstream.post(engine.url + "/v1/chat/completions", b"{}", HEADERS, LIMITS)
        with pytest.raises(UpstreamError, match="a redirect"):
            await upstream.open_stream(engine.url + "/v1/chat/completions", b"{}", HEADERS, LIMITS)
        assert elsewhere.requests == []  # nothing was sent where the engine pointed
    finally:
        await upstream.close()
        await engine.stop()
        await elsewhere.stop()


async def test_aiohttp_scrapes_and_probes_never_raise() -> None:
    """A scrape of ``text/plain`` without a charset raised (the encoding was asked before
    the body was read) and a probe of an answer declared past the bound raised: either
    failed every engine's probe or scrape round (review)."""
    from gateway.upstream.client import UpstreamClient

    metrics = b"vllm:num_requests_running 0\n"
    plain = await _engine(ok(metrics, status=b"200 OK").replace(b"application/json", b"text/plain"))
    huge = await _engine(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (1 << 40))
    upstream = UpstreamClient(UpstreamSettings())
    await upstream.start()
    try:
        assert await upstream.fetch_text(plain.url + "/metrics") == metrics.decode()
        assert await upstream.probe(huge.url) is False
    finally:
        await upstream.close()
        await plain.stop()
        await huge.stop()
