"""An engine's error event inside a stream, rewritten in OpenAI's shape."""

from __future__ import annotations

import json

import orjson

from gateway.upstream.relay import STREAM_ERROR, mapped_error_events

CHUNK = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


def test_an_error_event_is_mapped_and_the_rest_is_untouched() -> None:
    error = {"message": "Input length (9) exceeds model's maximum context length (8).",
             "type": "BadRequestError", "param": None, "code": 400}  # fmt: skip
    event = b"data: " + json.dumps({"error": error}).encode() + b"\n\n"
    batch = CHUNK + event + b"data: [DONE]\n\n"
    assert STREAM_ERROR in batch
    mapped = mapped_error_events(batch, "prompt")[0]
    parts = mapped.split(b"\n\n")
    assert parts[0] + b"\n\n" == CHUNK and parts[2] == b"data: [DONE]"
    body = orjson.loads(parts[1][6:])["error"]
    assert body["code"] == "context_length_exceeded" and body["param"] == "prompt"
    assert body["type"] == "invalid_request_error"


def test_a_server_error_event_keeps_its_status_class() -> None:
    event = b'data: {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}'
    mapped = mapped_error_events(event + b"\n\n", "messages")[0]
    assert orjson.loads(mapped.split(b"\n\n")[0][6:])["error"]["type"] == "server_error"
