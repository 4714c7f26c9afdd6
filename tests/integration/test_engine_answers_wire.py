"""An engine's failure told from its answer, through a whole gateway (bug hunt, both
upstream clients; raw-socket engines, the mode named in the last message):

- an engine that starts every stream and then breaks off (the connection closes, it
  stalls past ``read_timeout_s``, its chunked framing cannot be read) is taken out of
  rotation by its breaker; before, each stream's first event counted as a success, so
  the breaker never opened. A stream the engine ends with an error event of its own
  (a prompt too long for the context) does not count against it;
- an engine that answered a stream request with something else than ``200
  text/event-stream`` (a whole JSON answer, ``226``, ``299``, a stream without any
  event) gets a 502 saying so, and the request is not sent to another engine (the same
  generation would run twice); before, it was "unreachable": a failover, or a 503;
- a 2xx labelled JSON whose body is not JSON (cut short, not UTF-8) is a 502, not the
  bytes relayed as the answer (the client's SDK then failed to parse them).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.hostile_engine import SSE_HEAD, ScriptedEngine
from tests.helpers.metrics_text import metric_sum
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

READ_TIMEOUT_S = 1.0
BREAKER_FAILURES = 2


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(text: str) -> bytes:
    chunk = {"id": "chatcmpl-wire", "object": "chat.completion.chunk", "created": 1,
             "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                        "finish_reason": None}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


ANSWER = json.dumps(
    {"id": "chatcmpl-wire", "object": "chat.completion", "created": 1, "model": "m",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                  "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
).encode()  # fmt: skip
CONTEXT_ERROR = (
    b'data: {"error": {"message": "This model\'s maximum context length is 8 tokens.", '
    b'"type": "BadRequestError", "param": null, "code": 400}}\n\n'
)


def _whole(status: bytes, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
    return head % (status, content_type, len(body)) + body


class AnswerEngine(ScriptedEngine):
    """Answers each chat request as the mode in its last message says."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        events = _event("hello") + _event(" there") + b"data: [DONE]\n\n"
        if mode == "json_to_stream":
            writer.write(_whole(b"200 OK", b"application/json", ANSWER))
        elif mode in ("s226", "s299"):
            writer.write(_whole(mode[1:].encode() + b" Odd", b"text/event-stream", events))
        elif mode == "empty_stream":
            writer.write(SSE_HEAD + b"0\r\n\r\n")
        elif mode == "not_json":
            writer.write(_whole(b"200 OK", b"application/json", ANSWER[:40]))
        elif mode == "not_utf8":
            writer.write(_whole(b"200 OK", b"application/json", ANSWER.replace(b"hello", b"\xff")))
        elif mode == "context_error":  # its own error event, and the body ends
            writer.write(SSE_HEAD + _chunk(CONTEXT_ERROR) + b"0\r\n\r\n")
        elif mode in ("break_after_first", "stall_after_first", "garbage_after_first"):
            writer.write(SSE_HEAD + _chunk(_event("hello")))
            await writer.drain()
            if mode == "garbage_after_first":
                # Pacing, not waiting: aiohttp drops what it holds unread once its
                # parser fails, so the first event goes alone.
                await asyncio.sleep(0.2)
                writer.write(b"zz-not-a-chunk-size\r\n\r\n")
            elif mode == "stall_after_first":
                await asyncio.sleep(READ_TIMEOUT_S * 5)  # the gateway gives up first
            await writer.drain()
            return False
        elif request.get("stream"):
            writer.write(SSE_HEAD + _chunk(events) + b"0\r\n\r\n")
        else:
            writer.write(_whole(b"200 OK", b"application/json", ANSWER))
        await writer.drain()
        return True


BREAKS = ("break_after_first", "stall_after_first", "garbage_after_first")
"""Modes whose engine starts the stream and then fails it, one engine each."""
REFUSED = {
    "json_to_stream": (True, "a stream request answered with application/json"),
    "s226": (True, "a stream request answered with HTTP 226"),
    "s299": (True, "a stream request answered with HTTP 299"),
    "empty_stream": (True, "stream ended before its first event"),
    "not_json": (False, "not valid JSON"),
    "not_utf8": (False, "not valid JSON"),
}
"""Modes the gateway cannot relay: whether the request streams, what the 502 says."""


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, AnswerEngine]]:
    """An engine per mode, each with its own breaker."""
    running = {name: AnswerEngine() for name in ("context_error", *BREAKS, *REFUSED)}
    for engine in running.values():
        engine.__enter__()
    yield running
    for engine in running.values():
        engine.__exit__()


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest,
    engines: dict[str, AnswerEngine],
    stub: Stub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    models: list[dict[str, Any]] = [
        # The stub beside each: a request that failed over would reach it.
        {"name": n, "endpoints": [e.url, stub.url], "upstream_model": STUB_MODEL}
        if n in REFUSED
        else {"name": n, "endpoints": [e.url]}
        for n, e in engines.items()
    ]
    config: dict[str, Any] = {
        "models": models,
        "upstream": {
            "client": request.param,
            "read_timeout_s": READ_TIMEOUT_S,
            "breaker_failures": BREAKER_FAILURES,
            "breaker_cooldown_s": 600,
            "retries": 1,
        },
        "routing": {"policy": "round_robin"},
    }
    directory: Path = tmp_path_factory.mktemp(f"answers-{request.param}")
    yield from start_gateway(config, directory)


def chat(gateway: Gateway, model: str, mode: str, stream: bool) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}],
        "stream": stream,
    }
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)


def breaker_open(gateway: Gateway, engine: ScriptedEngine) -> bool:
    return metric_sum(gateway.metrics(), "vgate_engine_breaker_open", engine=engine.url) == 1.0


@pytest.mark.parametrize("mode", list(REFUSED))
def test_an_answer_that_cannot_be_relayed_is_a_502_and_the_engines_failure(
    gateway: Gateway, engines: dict[str, AnswerEngine], mode: str
) -> None:
    stream, says = REFUSED[mode]
    engine = engines[mode]
    asked = len(engine.requests)  # (by the other client's gateway)
    for _ in range(4 * BREAKER_FAILURES):  # round robin: half go to the engine first
        before = len(engine.requests)
        reply = chat(gateway, mode, mode, stream)
        if len(engine.requests) == before:  # the stub's: a good answer
            assert reply.status_code == 200
            continue
        assert reply.status_code == 502, reply.text[:300]  # not the stub's 200 after it
        error = reply.json()["error"]
        assert (error["type"], error["code"]) == ("upstream_error", "bad_gateway")
        assert says in error["message"]
        if len(engine.requests) - asked == BREAKER_FAILURES:
            break
    assert len(engine.requests) - asked == BREAKER_FAILURES
    holds_soon(lambda: breaker_open(gateway, engine), within_s=5)  # each one counted


@pytest.mark.parametrize("mode", BREAKS)
def test_an_engine_that_breaks_off_its_streams_is_taken_out_of_rotation(
    gateway: Gateway, engines: dict[str, AnswerEngine], mode: str
) -> None:
    engine = engines[mode]
    for _ in range(BREAKER_FAILURES):
        reply = chat(gateway, mode, mode, stream=True)
        assert reply.status_code == 200 and "hello" in reply.text  # its first event came
        assert '"error"' in reply.text  # then the gateway's error event
    holds_soon(lambda: breaker_open(gateway, engine), within_s=5)
    asked = len(engine.requests)
    reply = chat(gateway, mode, mode, stream=True)
    assert reply.status_code == 503  # no engine left for the model
    assert len(engine.requests) == asked


def test_an_error_event_of_the_engines_own_does_not_count_against_it(
    gateway: Gateway, engines: dict[str, AnswerEngine]
) -> None:
    engine = engines["context_error"]
    asked = len(engine.requests)
    for _ in range(BREAKER_FAILURES + 1):
        reply = chat(gateway, "context_error", "context_error", stream=True)
        assert reply.status_code == 200 and "maximum context length" in reply.text
    assert not breaker_open(gateway, engine)
    assert len(engine.requests) - asked == BREAKER_FAILURES + 1
