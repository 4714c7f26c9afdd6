"""Engines that answer in ways HTTP allows but vLLM does not, through a whole gateway:

- an interim ``100 Continue`` or ``103 Early Hints`` before the answer is skipped, and
  the answer relayed; before, the gateway relayed the ``100`` as its final answer
  (empty), and the real one was lost;
- engines are asked for ``Accept-Encoding: identity``; an answer gzip-encoded all the
  same is a 502 in OpenAI's shape, neither relayed as raw gzip bytes labelled JSON
  (as before) nor cached.

The engine is a raw asyncio server on its own thread: the answer's mode is named in
the last message (``MODE:<name>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.hostile_engine import ScriptedEngine
from tests.integration.conftest import Gateway, start_gateway

MODEL = "wire"
TEXT = "the real answer"


def _answer_body() -> bytes:
    return json.dumps(
        {"id": "chatcmpl-wire", "object": "chat.completion", "created": 1, "model": MODEL,
         "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}
    ).encode()  # fmt: skip


def _stream_body() -> bytes:
    chunk = {"id": "chatcmpl-wire", "object": "chat.completion.chunk", "created": 1,
             "model": MODEL, "choices": [{"index": 0, "delta": {"content": TEXT},
                                          "finish_reason": "stop"}]}  # fmt: skip
    return b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"


def _head(status: bytes, content_type: bytes, length: int, *extra: bytes) -> bytes:
    lines = [b"HTTP/1.1 " + status, b"content-type: " + content_type, *extra]
    return b"\r\n".join([*lines, b"content-length: %d" % length]) + b"\r\n\r\n"


class WireEngine(ScriptedEngine):
    """Answers chat requests in the mode their last message names, on its own thread."""

    model = MODEL

    @property
    def modes(self) -> list[str]:
        return self.requests

    @property
    def accept_encodings(self) -> list[str | None]:
        return [fields.get("accept-encoding") for fields in self.headers]

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        stream = bool(request.get("stream"))
        body = _stream_body() if stream else _answer_body()
        kind = b"text/event-stream" if stream else b"application/json"
        if mode in ("continue", "hints"):
            interim = b"HTTP/1.1 100 Continue\r\n\r\n"
            if mode == "hints":
                interim = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
            writer.write(interim)
            await writer.drain()
            await asyncio.sleep(0.2)  # pacing, not waiting: the interim head goes alone
        if mode == "longhead":  # a header value that never ends (8 MiB, then silence)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-long: ")
            with contextlib.suppress(ConnectionError):  # the gateway gives up first
                for _ in range(128):
                    writer.write(b"a" * 65536)
                    await writer.drain()
                await asyncio.sleep(30)  # holding the head unfinished
            return False
        if mode == "status600":
            writer.write(_head(b"600 Unheard Of", kind, len(body)) + body)
            await writer.drain()
            return True
        if mode == "trailing":  # the answer, then a second response in the same write
            other = b'{"other": "answer"}'
            writer.write(
                _head(b"200 OK", kind, len(body))
                + body
                + _head(b"500 Internal Server Error", b"application/json", len(other))
                + other
            )
            await writer.drain()
            return True
        if mode == "open_after_completed":  # a Responses stream that never ends its body
            completed = {
                "type": "response.completed",
                "sequence_number": 1,
                "response": {
                    "id": "resp_wire",
                    "object": "response",
                    "status": "completed",
                    "output": [],
                    "model": MODEL,
                },
            }
            events = b"event: response.completed\ndata: " + json.dumps(completed).encode()
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\n\n\r\n" % (len(events) + 2, events))
            await writer.drain()
            await asyncio.sleep(30)
            return False
        if mode == "open_after_done" and stream:  # [DONE], and the body never ends
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            writer.write(head + b"transfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(body), body))
            await writer.drain()
            await asyncio.sleep(30)
            return False
        extra: tuple[bytes, ...] = ()
        if mode == "gzip":
            body, extra = gzip.compress(body), (b"content-encoding: gzip",)
        writer.write(_head(b"200 OK", kind, len(body), *extra) + body)
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def engine() -> Iterator[WireEngine]:
    with WireEngine() as running:
        yield running


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, engine: WireEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Gateway]]:
    config: dict[str, Any] = {
        "models": [{"name": MODEL, "endpoints": [engine.url]}],
        "upstream": {"client": request.param, "breaker_failures": 1000, "read_timeout_s": 5},
        "cache": {"enabled": True, "namespace": f"wire-{uuid.uuid4().hex[:8]}"},
    }
    directory: Path = tmp_path_factory.mktemp(f"wire-{request.param}")
    for running in start_gateway(config, directory):
        yield request.param, running


def chat(gateway: Gateway, mode: str, stream: bool, timeout: float = 15) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}],
        "stream": stream,
        "temperature": 0,
    }
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=timeout)


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("mode", ["continue", "hints"])
def test_an_interim_response_is_skipped_and_the_answer_relayed(
    gateway: tuple[str, Gateway], mode: str, stream: bool
) -> None:
    reply = chat(gateway[1], mode, stream)
    assert reply.status_code == 200
    if stream:
        assert TEXT in reply.text and reply.text.rstrip().endswith("data: [DONE]")
    else:
        assert reply.json()["choices"][0]["message"]["content"] == TEXT


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_gzip_answer_is_a_502_in_openai_shape_and_not_cached(
    gateway: tuple[str, Gateway], engine: WireEngine, stream: bool
) -> None:
    _, running = gateway
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"MODE:gzip {uuid.uuid4().hex}"}],
        "stream": stream,
        "temperature": 0,
    }
    before = len(engine.modes)
    for _ in range(2):  # the same request again: nothing was cached
        reply = httpx.post(f"{running.url}/v1/chat/completions", json=body, timeout=15)
        assert reply.status_code == 502
        error = reply.json()["error"]
        assert error["type"] == "upstream_error" and "content coding 'gzip'" in error["message"]
    assert engine.modes[before:] == ["gzip", "gzip"]
    assert engine.accept_encodings[-1] == "identity"


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
@pytest.mark.parametrize("mode", ["longhead", "status600"])
def test_an_endless_head_or_an_unknown_status_is_a_502(
    gateway: tuple[str, Gateway], mode: str, stream: bool
) -> None:
    """An endless response head was read until the read deadline (a 504 after it, the
    gateway's memory and CPU growing meanwhile); a status above 599 crashed the handler
    (no answer at all)."""
    reply = chat(gateway[1], mode, stream)
    assert reply.status_code == 502, reply.text[:200]
    assert reply.json()["error"]["type"] == "upstream_error"
    assert chat(gateway[1], "plain", stream).status_code == 200  # the gateway is unharmed


def test_a_second_response_behind_the_answer_changes_nothing(
    gateway: tuple[str, Gateway], engine: WireEngine
) -> None:
    """Bytes after a complete answer in the same read were parsed as more of it: the
    500 behind it replaced the answer's status (the request then failed over), or its
    body was appended. The answer stands; the connection is not reused."""
    before = len(engine.modes)
    reply = chat(gateway[1], "trailing", stream=False)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == TEXT
    assert engine.modes[before:] == ["trailing"]
    for _ in range(3):  # the next requests get their own answers
        assert (
            chat(gateway[1], "plain", stream=False).json()["choices"][0]["message"]["content"]
            == TEXT
        )


def test_a_stream_ends_at_done_when_the_engine_keeps_its_body_open(
    gateway: tuple[str, Gateway],
) -> None:
    """The client's stream ended only when the gateway's read deadline (5 s here, 600 s
    by default) gave up on the rest of the body."""
    reply = chat(gateway[1], "open_after_done", stream=True, timeout=3)
    assert reply.status_code == 200
    assert TEXT in reply.text and reply.text.rstrip().endswith("data: [DONE]")


def test_a_responses_stream_ends_when_complete_though_the_engine_keeps_its_body_open(
    gateway: tuple[str, Gateway],
) -> None:
    """As for chat's [DONE]: the stream ended only at the gateway's read deadline."""
    body = {"model": MODEL, "input": f"MODE:open_after_completed {uuid.uuid4().hex}",
            "stream": True, "store": False}  # fmt: skip
    url = f"{gateway[1].url}/v1/responses"
    reply = httpx.post(url, json=body, timeout=3)
    assert reply.status_code == 200
    assert "response.completed" in reply.text and '"type":"error"' not in reply.text
