"""Security audit, through a real gateway: an engine's error answer that names its
internals (a traceback, file paths of its host, its peers' addresses) reaches the
client without them, whole answers and streams alike, through both engine clients.

Before, a 500 from the engine reached the tenant whose request failed as the engine
wrote it, traceback and all (only URLs were removed).
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

from gateway.errors.engine_internals import engine_failure_message
from tests.helpers.hostile_engine import SSE_HEAD, ScriptedEngine
from tests.integration.conftest import Gateway, start_gateway

INTERNAL = (
    "failed in /opt/vllm/engine/core.py on 10.1.2.3:8001 (peer vllm-1.engines.svc:8000)\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/vllm/worker.py", line 7, in step\n'
    "RuntimeError: CUDA error"
)
LEAKS = ("/opt/", "/usr/lib", "10.1.2.3", "vllm-1", "Traceback", "worker.py", "RuntimeError")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class LeakyEngine(ScriptedEngine):
    """Answers ``MODE:e500``/``MODE:e400`` with that status and :data:`INTERNAL` as
    vLLM's error message, ``MODE:text502`` with it as plain text, and ``MODE:event500``
    with a stream whose second event is vLLM's error event carrying it."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        error = {"error": {"message": INTERNAL, "type": "InternalServerError", "code": 500}}
        if mode == "event500":
            writer.write(SSE_HEAD + _chunk(b"data: " + json.dumps(error).encode() + b"\n\n"))
            writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
            return True
        status, body, kind = {
            "e500": (b"500 Internal Server Error", json.dumps(error).encode(), b"json"),
            "e400": (b"400 Bad Request", json.dumps(error).encode(), b"json"),
            "text502": (b"502 Bad Gateway", INTERNAL.encode(), b"plain"),
        }[mode]
        head = b"HTTP/1.1 %s\r\ncontent-type: application/%s\r\n" % (status, kind)
        writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def engine() -> Iterator[LeakyEngine]:
    with LeakyEngine() as running:
        yield running


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, engine: LeakyEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": "m", "endpoints": [engine.url]}],
        "upstream": {"client": request.param, "breaker_failures": 1000, "retries": 0},
    }
    directory: Path = tmp_path_factory.mktemp("leaky")
    yield from start_gateway(config, directory)


def _ask(gateway: Gateway, mode: str, stream: bool) -> httpx.Response:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}],
        "stream": stream,
    }
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("mode", "status"), [("e500", 500), ("text502", 502)])
def test_an_engines_5xx_reaches_the_client_as_the_gateways_words(
    gateway: Gateway, mode: str, status: int, stream: bool
) -> None:
    reply = _ask(gateway, mode, stream)
    assert reply.status_code == status
    assert not any(leak in reply.text for leak in LEAKS), reply.text
    assert reply.json()["error"]["message"] == engine_failure_message(status)


@pytest.mark.parametrize("stream", [False, True])
def test_an_engines_4xx_keeps_its_words_less_its_internals(gateway: Gateway, stream: bool) -> None:
    reply = _ask(gateway, "e400", stream)
    assert reply.status_code == 400
    assert not any(leak in reply.text for leak in LEAKS), reply.text
    message = reply.json()["error"]["message"]
    assert message == "failed in <path> on <engine> (peer <engine>)"


def test_an_error_event_in_a_stream_carries_no_internals(gateway: Gateway) -> None:
    reply = _ask(gateway, "event500", stream=True)
    assert reply.status_code == 200
    events = [line for line in reply.text.split("\n\n") if '"error"' in line]
    assert len(events) == 1, reply.text
    assert json.loads(events[0][len("data: ") :])["error"]["message"] == (
        engine_failure_message(500)
    )
    assert not any(leak in reply.text for leak in LEAKS), reply.text
