"""An engine's error event in a stream, however it is spelled (``data:`` with or
without its space, vLLM's ``{"error": ...}`` or its older ``{"object": "error", ...}``),
leaves the relay in OpenAI's shape, written as :data:`STREAM_ERROR` begins, which is
what the cache looks for. Text that only looks like one is left alone."""

from __future__ import annotations

import orjson
import pytest

from gateway.upstream.relay import ERROR_WORD, STREAM_ERROR, mapped_error_events

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"
SPELLINGS = [
    b'data: {"error": {"message": "too long", "type": "BadRequestError", "code": 400}}',
    b'data:{"error":{"message":"too long","type":"BadRequestError","code":400}}',
    b'data:  { "error" : {"message": "too long", "code": 400}}',
    b'data: {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}',
    b'data:{"object":"error","message":"too long","code":400}',
]


@pytest.mark.parametrize("event", SPELLINGS)
def test_every_spelling_is_mapped(event: bytes) -> None:
    batch = CHUNK + event + b"\n\n" + DONE
    assert ERROR_WORD in batch
    mapped = mapped_error_events(batch, "messages")[0]
    parts = mapped.split(b"\n\n")
    assert parts[0] + b"\n\n" == CHUNK and parts[2] + b"\n\n" == DONE
    assert parts[1].startswith(STREAM_ERROR)
    error = orjson.loads(parts[1][len(b"data: ") :])["error"]
    assert error["message"] == "too long" and error["type"] == "invalid_request_error"


def test_an_older_error_keeps_its_status() -> None:
    event = b'data: {"object": "error", "message": "boom", "code": 503}\n\n'
    mapped = mapped_error_events(event, "messages")[0]
    assert orjson.loads(mapped[len(b"data: ") : -2])["error"]["type"] == "server_error"


@pytest.mark.parametrize(
    "text",
    [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"error"}}]}\n\n',
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" \\"error\\""}}]}\n\n',
        b'data: {"id":"c","choices":[{"delta":{"content":"\\"object\\": \\"error\\""}}]}\n\n',
        b'data: {"id":"c","choices":[{"delta":{"x":{"object":"error"}}}]}\n\n',
    ],
)
def test_text_that_looks_like_an_error_is_left_alone(text: bytes) -> None:
    batch = CHUNK + text + DONE
    assert mapped_error_events(batch, "messages")[0] is batch
