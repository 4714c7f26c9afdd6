"""What a client is told when an engine's connection fails: plain words, never the name
of a library's exception class (``ClientPayloadError``, ``HttpParserError``,
``ConnectionResetError``, ...), on both upstream clients, in a 502's message and in a
stream's error event. The detail stays in the gateway's log.

The engine closes the connection part way through the body (``midbody``), sends bytes
that are no HTTP (``garbage``: before the head, or as a broken chunk once the head is
in: ``badchunk``), or resets the connection part way (``reset``: an RST, ``SO_LINGER``
0)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.hostile_engine import SSE_HEAD, ScriptedEngine
from tests.integration.conftest import Gateway, start_gateway

CLASS_NAME = re.compile(r"[A-Za-z]*(?:Error|Exception|Disconnected|Refused)\b")
"""A library's exception class, as ``type(exc).__name__`` writes it."""
JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n"
EVENT = b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"delta":{}}]}\n\n'


class BreakingEngine(ScriptedEngine):
    """Breaks each answer as its mode says (module docstring)."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        stream = bool(request.get("stream"))
        started = SSE_HEAD + b"%x\r\n%s\r\n" % (len(EVENT), EVENT) if stream else JSON_HEAD + b"{"
        if mode == "garbage":
            writer.write(b"\x00\x01 NOT HTTP AT ALL \xff\r\n\r\n")
        elif mode == "badchunk":
            duplicate = JSON_HEAD[:-2] + b"content-length: 7\r\n\r\n"  # two lengths
            writer.write(started + b"zz-not-a-chunk-size\r\n" if stream else duplicate)
        else:
            writer.write(started)
        await writer.drain()
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False


@pytest.fixture(scope="module")
def engine() -> Iterator[BreakingEngine]:
    with BreakingEngine() as running:
        yield running


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, engine: BreakingEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": "breaking", "endpoints": [engine.url]}],
        "upstream": {"client": request.param, "retries": 0, "breaker_failures": 1000,
                     "health_interval_s": 3600},
    }  # fmt: skip
    directory: Path = tmp_path_factory.mktemp(f"words-{request.param}")
    yield from start_gateway(config, directory)


def told(gateway: Gateway, mode: str, stream: bool) -> tuple[int, str]:
    """The status and the error message the client gets (a stream's: its error event)."""
    body = {
        "model": "breaking",
        "messages": [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}],
        "stream": stream,
    }
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)
    if reply.headers.get("content-type", "").startswith("application/json"):
        return reply.status_code, reply.json()["error"]["message"]
    event = next(line for line in reply.text.splitlines() if line.startswith('data: {"error"'))
    return reply.status_code, json.loads(event[6:])["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["midbody", "garbage", "badchunk", "reset"])
def test_a_broken_engine_connection_is_told_in_plain_words(
    gateway: Gateway, mode: str, stream: bool
) -> None:
    status, message = told(gateway, mode, stream)
    assert status in (200, 502), message  # 200: the stream had begun; its error event
    assert CLASS_NAME.search(message) is None, message
    words = "invalid HTTP response" if mode in ("garbage", "badchunk") else "closed the connection"
    assert words in message, message
