"""Pipeline results and errors sent as ASGI messages: the same headers Starlette's
responses sent, streams run by run, and a stream's resources released however it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from gateway.cache.entry import Entry
from gateway.errors import RateLimitError, UpstreamTimeoutError
from gateway.http.answers import send_error, send_internal_error, send_result
from gateway.pipeline.results import Answer, EventStream, Replay


class Sent:
    """An ASGI ``send`` that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def start(self) -> Message:
        return self.messages[0]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.start["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


class Closes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_an_answer_is_one_start_and_one_body_with_its_headers() -> None:
    sent = Sent()
    await send_result(Answer(b'{"a":1}', [(b"x-ratelimit-remaining-requests", b"9")], 201), sent)
    assert sent.start == {
        "type": "http.response.start",
        "status": 201,
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-ratelimit-remaining-requests", b"9"),
            (b"content-length", b"7"),
        ],
    }
    assert sent.messages[1:] == [{"type": "http.response.body", "body": b'{"a":1}'}]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_replay_has_its_cache_headers_and_the_stored_form(stream: bool) -> None:
    payload = b'data: {"id":"chatcmpl-1"}\n\n' if stream else b'{"id":"chatcmpl-1"}'
    entry = Entry(stream=stream, payload=payload, answer_id="chatcmpl-1", tokens=3)
    sent = Sent()
    await send_result(Replay(entry, True, [(b"x-cache", b"HIT"), (b"age", b"2")]), sent)
    content_type = b"text/event-stream; charset=utf-8" if stream else b"application/json"
    assert sent.headers[b"content-type"] == content_type
    assert sent.headers[b"x-cache"] == b"HIT"
    if stream:  # framed as the engine's relayed streams are: no length, a last chunk
        assert b"content-length" not in sent.headers
        assert sent.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    else:
        assert sent.headers[b"content-length"] == b"%d" % len(sent.body)
    assert b'"chatcmpl-1"' not in sent.body  # a fresh id (the new one may start "chatcmpl-1")


async def events(*batches: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    for batch in batches:
        yield batch
    if fail:
        raise UpstreamTimeoutError("the engine stopped sending")


async def test_a_stream_is_sent_run_by_run_then_closed() -> None:
    sent, close = Sent(), Closes()
    stream = EventStream(events(b"data: 1\n\n", b"data: 2\n\n"), [(b"x-cache", b"MISS")], close)
    await send_result(stream, sent)
    assert sent.start["status"] == 200
    assert sent.start["headers"] == [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-cache", b"MISS"),
    ]
    assert sent.messages[1:] == [
        {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    assert close.count == 1


async def test_a_stream_failing_part_way_ends_with_an_error_event_and_done() -> None:
    sent, close = Sent(), Closes()
    await send_result(EventStream(events(b"data: 1\n\n", fail=True), [], close), sent)
    last = sent.messages[-2]["body"]
    assert last.startswith(b'data: {"error":{"message":"the engine stopped sending"')
    assert last.endswith(b"\n\ndata: [DONE]\n\n")
    assert sent.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert close.count == 1


async def test_a_stream_whose_send_fails_is_still_closed() -> None:
    close = Closes()

    async def broken(message: Message) -> None:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        await send_result(EventStream(events(b"data: 1\n\n"), [], close), broken)
    assert close.count == 1


async def test_an_error_has_its_headers_in_raw_form() -> None:
    sent = Sent()
    await send_error(RateLimitError("slow down", "requests", {"Retry-After": "3"}), sent)
    assert sent.start["status"] == 429
    assert sent.headers[b"retry-after"] == b"3"
    assert sent.headers[b"content-type"] == b"application/json"
    assert sent.headers[b"content-length"] == b"%d" % len(sent.body)
    assert b'"code":"rate_limit_exceeded"' in sent.body


async def test_the_internal_error_says_nothing_more() -> None:
    sent = Sent()
    await send_internal_error(sent)
    assert sent.start["status"] == 500
    assert b'"type":"internal_error"' in sent.body
