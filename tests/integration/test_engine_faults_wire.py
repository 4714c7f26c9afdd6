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


def chat(gateway: Gateway, mode: str, stream: bool) -> httpx.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}],
        "stream": stream,
        "temperature": 0,
    }
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)


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
