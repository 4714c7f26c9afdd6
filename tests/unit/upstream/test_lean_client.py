"""The lean upstream client against a real local server: answers whole and streamed,
Content-Length and chunked, keep-alive reuse and its limits, every failure as the
forwarder needs it (unreachable before an answer, an error after), and timeouts."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.lean import LeanUpstream
from gateway.upstream.transport import CLOSED_MID_ANSWER, INVALID_RESPONSE, EngineUnreachable
from tests.helpers.processes import free_port
from tests.unit.upstream.scripted_engine import Answer, ScriptedEngine, Seen, chunk_of, chunked, ok

HEADERS = {"Content-Type": "application/json", "X-Request-Id": "vgate-1"}
LIMITS = Deadlines(connect_s=1.0, ttft_s=None, idle_s=0.3, total_s=None)
EVENT = b'data: {"n": 1}\n\n'
DONE = b"data: [DONE]\n\n"
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


async def _upstream(**settings: object) -> LeanUpstream:
    upstream = LeanUpstream(UpstreamSettings.model_validate(settings))
    await upstream.start()
    return upstream


async def _engine(answer: Answer) -> ScriptedEngine:
    engine = ScriptedEngine(answer)
    await engine.start()
    return engine


def _writes(*parts: bytes, close: bool = False, pause: float = 0.0) -> Answer:
    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if close:
            writer.close()

    return answer


@pytest.fixture
async def upstream() -> AsyncIterator[LeanUpstream]:
    client = await _upstream()
    yield client
    await client.close()


async def _events(upstream: LeanUpstream, url: str) -> list[bytes]:
    stream = await upstream.open_stream(url, b"{}", HEADERS, LIMITS)
    try:
        await stream.prime()
        return [batch async for batch in stream.batches()]
    finally:
        stream.close()


async def test_an_answer_is_read_whole_and_its_connection_reused(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(ok(b'{"id": 1}')))
    try:
        for _ in range(3):
            reply = await upstream.post(engine.url + "/v1/chat/completions", b"{}", HEADERS, LIMITS)
            assert (reply.status, reply.content_type, reply.body) == (
                200,
                "application/json",
                b'{"id": 1}',
            )
        assert engine.connections == 1
        seen = engine.requests[0]
        assert seen.head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert seen.header("x-request-id") == "vgate-1" and seen.body == b"{}"
        assert seen.header("host") == engine.url.removeprefix("http://")
    finally:
        await engine.stop()


async def test_a_chunked_answer_is_joined(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(chunked(b'{"a"', b": 1}", content_type=b"application/json")))
    try:
        reply = await upstream.post(engine.url + "/v1/x", b"{}", HEADERS, LIMITS)
        assert reply.body == b'{"a": 1}'
    finally:
        await engine.stop()


async def test_connection_close_is_not_reused(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(ok(b"{}", b"Connection: close"), close=True))
    try:
        for _ in range(2):
            assert (await upstream.post(engine.url, b"{}", HEADERS, LIMITS)).status == 200
        assert engine.connections == 2
    finally:
        await engine.stop()


async def test_an_error_status_is_a_reply_with_its_body(upstream: LeanUpstream) -> None:
    answer = ok(b'{"error": "no"}', b"X-A: b", status=b"503 Service Unavailable")
    engine = await _engine(_writes(answer.replace(b"application/json", b"text/plain; charset=x")))
    try:
        reply = await upstream.post(engine.url, b"{}", HEADERS, LIMITS)
        assert (reply.status, reply.content_type, reply.body) == (
            503,
            "text/plain",
            b'{"error": "no"}',
        )
        with pytest.raises(UpstreamStatusError) as caught:
            await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
        assert caught.value.status == 503 and engine.connections == 1  # read whole: reused
    finally:
        await engine.stop()


async def test_a_stream_yields_whole_events_then_hands_its_connection_back(
    upstream: LeanUpstream,
) -> None:
    head = SSE_HEAD
    parts = (head + chunk_of(EVENT[:5]), chunk_of(EVENT[5:] + EVENT), chunk_of(DONE) + b"0\r\n\r\n")
    engine = await _engine(_writes(*parts, pause=0.01))
    try:
        assert b"".join(await _events(upstream, engine.url)) == EVENT * 2 + DONE
        assert b"".join(await _events(upstream, engine.url)) == EVENT * 2 + DONE
        assert engine.connections == 1
    finally:
        await engine.stop()


async def test_a_stream_until_close_ends_with_the_connection(upstream: LeanUpstream) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    engine = await _engine(_writes(head + EVENT, DONE, close=True))
    try:
        assert b"".join(await _events(upstream, engine.url)) == EVENT + DONE
    finally:
        await engine.stop()


async def test_an_abandoned_stream_closes_its_connection(upstream: LeanUpstream) -> None:
    head = SSE_HEAD
    release = asyncio.Event()

    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(head + chunk_of(EVENT))
        await release.wait()

    engine = await _engine(answer)
    try:
        stream = await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
        await stream.prime()
        stream.close()  # the client left
        release.set()
        for _ in range(50):
            if engine.disconnects:
                break
            await asyncio.sleep(0.01)
        assert engine.disconnects == 1
    finally:
        await engine.stop()


async def test_a_connection_closed_before_the_answer_is_unreachable(
    upstream: LeanUpstream,
) -> None:
    engine = await _engine(_writes(close=True))
    try:
        with pytest.raises(EngineUnreachable):
            await upstream.post(engine.url, b"{}", HEADERS, LIMITS)
        with pytest.raises(EngineUnreachable):
            await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
    finally:
        await engine.stop()


async def test_a_refused_connection_is_unreachable(upstream: LeanUpstream) -> None:
    with pytest.raises(EngineUnreachable):
        await upstream.post(f"http://127.0.0.1:{free_port()}", b"{}", HEADERS, LIMITS)


async def test_a_body_cut_short_is_an_error_after_connect(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(ok(b'{"id": 1}')[:-3], close=True))
    try:  # in the aiohttp client's words (one constant for both)
        with pytest.raises(UpstreamError, match=f"^{CLOSED_MID_ANSWER}$"):
            await upstream.post(engine.url, b"{}", HEADERS, LIMITS)
    finally:
        await engine.stop()


async def test_a_stream_cut_mid_chunk_breaks(upstream: LeanUpstream) -> None:
    head = SSE_HEAD
    engine = await _engine(_writes(head + chunk_of(EVENT), b"ff\r\ndata", close=True))
    try:
        stream = await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
        await stream.prime()
        with pytest.raises(UpstreamError, match=f"^{CLOSED_MID_ANSWER}$"):
            [batch async for batch in stream.batches()]
        stream.close()
    finally:
        await engine.stop()


async def test_garbage_is_an_error_and_the_connection_is_dropped(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"))
    try:
        with pytest.raises(UpstreamError, match=f"^{INVALID_RESPONSE}$"):
            await upstream.post(engine.url, b"{}", HEADERS, LIMITS)
        with pytest.raises(UpstreamError):
            await upstream.post(engine.url, b"{}", HEADERS, LIMITS)
        assert engine.connections == 2
    finally:
        await engine.stop()


async def test_a_stalled_answer_times_out(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(ok(b"{}")[:20], pause=1))
    limits = Deadlines(connect_s=1.0, ttft_s=None, idle_s=5, total_s=0.2)
    try:
        with pytest.raises(UpstreamTimeoutError):
            await upstream.post(engine.url, b"{}", HEADERS, limits)
    finally:
        await engine.stop()


async def test_a_stream_silent_for_longer_than_idle_s_times_out(upstream: LeanUpstream) -> None:
    head = SSE_HEAD
    engine = await _engine(_writes(head + chunk_of(EVENT), pause=1))
    silent = await _engine(_writes(b"", pause=1))
    try:
        stream = await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
        await stream.prime()
        with pytest.raises(UpstreamTimeoutError, match="read_timeout_s"):
            [batch async for batch in stream.batches()]
        stream.close()
        with pytest.raises(UpstreamTimeoutError, match="start answering"):
            await upstream.open_stream(silent.url, b"{}", HEADERS, LIMITS)  # no head at all
    finally:
        await engine.stop()
        await silent.stop()


async def test_a_stream_busy_for_longer_than_idle_s_then_silent_times_out_once_idle(
    upstream: LeanUpstream,
) -> None:
    """The idle deadline's timer is armed lazily (connection.py): events 0.1 s apart for
    about 1 s, three times ``idle_s``, all arrive; the silence after them times out."""
    parts = [SSE_HEAD + chunk_of(EVENT), *[chunk_of(EVENT)] * 9, b""]
    engine = await _engine(_writes(*parts, pause=0.1))
    got: list[bytes] = []
    try:
        stream = await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
        await stream.prime()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeoutError, match="read_timeout_s"):
            async for batch in stream.batches():
                got.append(batch)
        assert b"".join(got) == EVENT * 10
        assert loop.time() - started >= 0.9 + LIMITS.idle_s * 0.9  # not before it was idle
        stream.close()
    finally:
        await engine.stop()


async def test_a_stream_past_its_total_deadline_times_out(upstream: LeanUpstream) -> None:
    head = SSE_HEAD
    engine = await _engine(_writes(head + chunk_of(EVENT), *[chunk_of(EVENT)] * 40, pause=0.05))
    try:
        stream = await upstream.open_stream(engine.url, b"{}", HEADERS, LIMITS)
        await stream.prime()
        stream.deadline = asyncio.get_running_loop().time() + 0.3
        with pytest.raises(UpstreamTimeoutError, match="total"):
            [batch async for batch in stream.batches()]
        stream.close()
    finally:
        await engine.stop()


async def test_an_idle_connection_the_engine_closed_is_replaced(upstream: LeanUpstream) -> None:
    engine = await _engine(_writes(ok(b"{}")))
    try:
        assert (await upstream.post(engine.url, b"{}", HEADERS, LIMITS)).status == 200
        await engine.drop_connections()
        assert (await upstream.post(engine.url, b"{}", HEADERS, LIMITS)).status == 200
        assert engine.connections == 2 and len(engine.requests) == 2  # sent once each
    finally:
        await engine.stop()


async def test_userinfo_is_sent_as_basic_auth_unless_a_key_is_given(
    upstream: LeanUpstream,
) -> None:
    engine = await _engine(_writes(ok(b"{}")))
    try:
        url = engine.url.replace("http://", "http://us%40er:p%3Ass0123456789@")
        await upstream.post(url, b"{}", HEADERS, LIMITS)
        basic = "Basic " + base64.b64encode(b"us@er:p:ss0123456789").decode()
        assert engine.requests[0].header("authorization") == basic
        await upstream.post(url, b"{}", {**HEADERS, "Authorization": "Bearer k"}, LIMITS)
        assert engine.requests[1].header("authorization") == "Bearer k"
        assert "us%40er" not in engine.requests[0].head.decode()
    finally:
        await engine.stop()


async def test_a_header_with_a_line_break_is_refused(upstream: LeanUpstream) -> None:
    with pytest.raises(UpstreamError):
        await upstream.post("http://127.0.0.1:1", b"", {"X": "a\r\nEvil: 1"}, LIMITS)


async def test_the_pool_holds_at_most_max_connections() -> None:
    busy = [0, 0]  # now, most at once (across both engines)

    async def answer(_: Seen, writer: asyncio.StreamWriter) -> None:
        busy[0] += 1
        busy[1] = max(busy)
        await asyncio.sleep(0.05)
        busy[0] -= 1
        writer.write(ok(b"{}"))

    upstream = await _upstream(max_connections=1)
    engines = [await _engine(answer) for _ in range(2)]
    try:
        replies = await asyncio.gather(
            *(upstream.post(e.url, b"{}", HEADERS, LIMITS) for e in engines * 2)
        )
        assert [r.status for r in replies] == [200] * 4 and busy[1] == 1
    finally:
        await upstream.close()
        for engine in engines:
            await engine.stop()


def test_it_runs_on_uvloop_as_the_gateway_does() -> None:
    """uvicorn serves the gateway on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def exchange() -> list[bytes]:
        engine = await _engine(_writes(chunked(EVENT, DONE)))
        upstream = await _upstream()
        try:
            events = await _events(upstream, engine.url)
            reply = await upstream.post(engine.url, b"{}", HEADERS, LIMITS)
            return [*events, reply.body]
        finally:
            await upstream.close()
            await engine.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert b"".join(runner.run(exchange())) == EVENT + DONE + EVENT + DONE
