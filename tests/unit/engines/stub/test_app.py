"""The stub ASGI app in process: disconnects and failing sends never leave counters wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from engines.stub.asgi import Message
from engines.stub.server import StubConfig, create_stub_app


class FakeClient:
    """An ASGI peer: sends one request body, then reports a disconnect when told to."""

    def __init__(self, body: dict[str, Any], *, fail_sends_after: int | None = None) -> None:
        self._body = orjson.dumps(body)
        self._fail_sends_after = fail_sends_after
        self.left = asyncio.Event()
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self._body:
            body, self._body = self._body, b""
            return {"type": "http.request", "body": body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self._fail_sends_after is not None and len(self.sent) >= self._fail_sends_after:
            raise OSError("connection reset")
        self.sent.append(message)


def scope(path: str = "/v1/chat/completions", method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [(b"x-a", b"1")]}


def chat_body(**stub: Any) -> dict[str, Any]:
    return {
        "model": "stub-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stub": stub,
    }


async def test_disconnect_ends_a_slow_stream_promptly() -> None:
    app = create_stub_app(StubConfig(itl_ms=10_000))
    client = FakeClient(chat_body())
    call = asyncio.create_task(app(scope(), client.receive, client.send))
    await asyncio.sleep(0.05)
    assert app.stats.in_flight == 1
    assert app.stats.running == {"stub-model": 1}
    client.left.set()
    await asyncio.wait_for(call, timeout=0.5)
    assert (app.stats.streams_cancelled, app.stats.streams_completed) == (1, 0)
    assert (app.stats.in_flight, app.stats.running) == (0, {"stub-model": 0})


async def test_disconnect_ends_a_hang() -> None:
    app = create_stub_app(StubConfig(hang=True))
    client = FakeClient({**chat_body(), "stream": False})
    call = asyncio.create_task(app(scope(), client.receive, client.send))
    await asyncio.sleep(0.05)
    assert client.sent == []
    client.left.set()
    await asyncio.wait_for(call, timeout=0.5)
    assert (app.stats.requests_cancelled, app.stats.in_flight) == (1, 0)


async def test_failing_send_counts_as_the_client_leaving() -> None:
    app = create_stub_app(StubConfig())
    client = FakeClient(chat_body(), fail_sends_after=2)
    await asyncio.wait_for(app(scope(), client.receive, client.send), timeout=0.5)
    assert len(client.sent) == 2
    assert (app.stats.streams_cancelled, app.stats.in_flight) == (1, 0)


async def test_complete_stream_is_counted_once() -> None:
    app = create_stub_app(StubConfig(tokens=2))
    client = FakeClient(chat_body())
    await asyncio.wait_for(app(scope(), client.receive, client.send), timeout=0.5)
    bodies = [message for message in client.sent if message["type"] == "http.response.body"]
    assert len(bodies) == 1 + 2 + 1  # role, two tokens, finish + [DONE]
    assert bodies[-1]["more_body"] is False
    assert bodies[-1]["body"].endswith(b"data: [DONE]\n\n")
    stats = app.stats.snapshot()
    assert (stats["streams_started"], stats["streams_completed"]) == (1, 1)
    assert stats["streams_cancelled"] == 0
    assert stats["last_request"]["headers"] == {"x-a": "1"}


async def test_lifespan_is_acknowledged() -> None:
    app = create_stub_app(StubConfig())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
