"""A misbehaving OpenAI-shaped engine for tests: an asyncio server on its own thread
that answers streaming chat requests in the way the last message's content names
(``MODE:<name>``), to check what the gateway does with engines that are not vLLM or
that break.

Modes: ``crlf`` (events end in CRLF, as sse-starlette writes them), ``cr`` (lone CR),
``endless`` (a ``data:`` line that never ends, one byte at a time), ``close_after_head``
(the 200 head, then the connection closes: an engine that died in prefill); anything
else is a well-formed LF stream. ``/health`` and ``/v1/models`` answer as vLLM's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from typing import Any, Self

from tests.helpers.processes import free_port

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


_MODE = re.compile(r"MODE:(\w+)")
"""The answer's mode, named in the request's last message (or its input)."""


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(text: str, line_end: bytes, finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                       "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(body).encode() + line_end * 2


class ScriptedEngine:
    """An engine on its own thread and event loop that answers each chat request as the
    mode in its last message says (:meth:`answer`, for subclasses); ``/health`` and
    ``/v1/models`` answer as vLLM's do. Records each request's mode and headers."""

    model = "m"

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[str] = []
        """The mode of each chat request, in order."""
        self.headers: list[dict[str, str]] = []
        """Each chat request's header fields (names in lower case)."""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                fields: dict[str, str] = {}
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
                length = int(fields.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                if head.startswith("GET"):
                    models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
                    answer = json.dumps(models).encode() if "/v1/models" in head else b""
                    head_out = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    writer.write(head_out + b"content-length: %d\r\n\r\n" % len(answer) + answer)
                    await writer.drain()
                    continue
                request = json.loads(body)
                messages = request.get("messages")  # chat; else the Responses API's input
                content = messages[-1]["content"] if messages else json.dumps(request["input"])
                named = _MODE.search(content)
                mode = named.group(1) if named else ""
                self.requests.append(mode)
                self.headers.append(fields)
                if not await self.answer(mode, request, writer):
                    break
        writer.close()

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one chat request; False when the connection is to be closed."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class HostileEngine(ScriptedEngine):
    """Streams framed or broken as the module docstring's modes say."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        """Act out ``mode``; False when the connection is to be closed."""
        writer.write(SSE_HEAD)
        if mode == "close_after_head":
            await writer.drain()
            return False
        if mode == "endless":
            writer.write(_chunk(b'data: {"id": "x", "choices": [{"delta": {"content": "'))
            while True:  # until the gateway gives up and closes
                writer.write(_chunk(b"x"))
                await writer.drain()
                await asyncio.sleep(0.001)
        line_end = {"crlf": b"\r\n", "cr": b"\r"}.get(mode, b"\n")
        for word in ("hello ", "there"):
            writer.write(_chunk(_event(word, line_end)))
        writer.write(_chunk(_event("", line_end, "stop")))
        writer.write(_chunk(b"data: [DONE]" + line_end * 2) + b"0\r\n\r\n")
        await writer.drain()
        return True


@contextlib.contextmanager
def hostile_engine() -> Iterator[HostileEngine]:
    with HostileEngine() as engine:
        yield engine
