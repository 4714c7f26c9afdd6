"""An engine that echoes the gateway's key in its error text: the tenant never sees it.

The gateway sends each engine a key of its own (``models[].api_key``); an engine (or a
proxy in front of it) that writes the request's ``Authorization`` into its 400, or into
an error event of its stream, handed that key to whichever tenant made the request.
Every engine key the gateway knows is written ``<engine-key>`` in relayed engine text.
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
from tests.integration.conftest import Gateway, start_gateway

ENGINE_KEY = "sk-engine-0123456789abcdef"
SECRET_MARK = "<engine-key>"
OTHER_KEY = "sk-other-engine-fedcba9876543210"
"""The key of another model's engines: known to the gateway, never shown either."""


class EchoingEngine(ScriptedEngine):
    """Answers with an error whose message holds the request's ``Authorization``
    (``MODE:status``: a 400; ``MODE:event``: a 200 stream with an error event) and
    another engine's key."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        said = f"bad request; you sent {self.headers[-1].get('authorization')} (not {OTHER_KEY})"
        error = {"error": {"message": said, "type": "BadRequestError", "param": None, "code": 400}}
        body = json.dumps(error).encode()
        if mode == "event":
            event = b"data: " + body + b"\n\n"
            writer.write(SSE_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
        else:
            head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def engine() -> Iterator[EchoingEngine]:
    with EchoingEngine() as running:
        yield running


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, engine: EchoingEngine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [
            {"name": "echo", "endpoints": [engine.url], "api_key": ENGINE_KEY},
            {"name": "other", "endpoints": ["http://127.0.0.1:9"], "api_key": OTHER_KEY},
        ],
        "upstream": {"client": request.param, "retries": 0},
    }
    directory: Path = tmp_path_factory.mktemp(f"echo-{request.param}")
    yield from start_gateway(config, directory)


@pytest.mark.parametrize(
    ("mode", "stream"),
    [("status", False), ("status", True), ("event", True)],  # error events come in streams
)
def test_an_engine_key_echoed_in_an_error_never_reaches_the_client(
    gateway: Gateway, engine: EchoingEngine, mode: str, stream: bool
) -> None:
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}],
        "stream": stream,
    }
    reply = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)
    assert engine.headers[-1]["authorization"] == f"Bearer {ENGINE_KEY}"  # it was sent
    text = reply.text
    assert ENGINE_KEY not in text and OTHER_KEY not in text
    assert "engine-0123" not in text and "fedcba" not in text  # nor a part of one
    if mode == "status":
        assert reply.status_code == 400, text[:300]
        message = reply.json()["error"]["message"]
    else:
        assert reply.status_code == 200, text[:300]
        event = next(line for line in text.splitlines() if line.startswith('data: {"error"'))
        message = json.loads(event[6:])["error"]["message"]
    assert message == f"bad request; you sent Bearer {SECRET_MARK} (not {SECRET_MARK})"
