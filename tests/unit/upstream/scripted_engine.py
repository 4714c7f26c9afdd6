"""A tiny HTTP/1.1 server on a local port whose every answer a test writes byte by byte,
so the lean client meets what real engines do and what broken ones do (close
mid-body, stall, send garbage, close idle connections)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Seen:
    """One request as the server read it."""

    head: bytes
    body: bytes
    connection: int
    """Which connection (0, 1, ...) carried it."""

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.lower() == name.lower():
                return value.strip()
        return None


Answer = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class ScriptedEngine:
    """Answers each request with ``answer``; records requests, connections and EOFs."""

    answer: Answer
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    disconnects: int = 0
    """Connections the client closed (EOF seen while reading the next request)."""
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def drop_connections(self) -> None:
        """Close every open connection from the server side (idle keep-alive expiry)."""
        for writer in self._writers:
            writer.close()
        self._writers.clear()
        await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.disconnects += 1
                    return
                seen = Seen(head, b"", number)
                length = int(seen.header("content-length") or 0)
                seen.body = await reader.readexactly(length)
                self.requests.append(seen)
                await self.answer(seen, writer)
                if writer.is_closing():
                    return
        finally:
            writer.close()


def ok(body: bytes, *extra: bytes, status: bytes = b"200 OK") -> bytes:
    """A Content-Length response."""
    head = [b"HTTP/1.1 " + status, b"Content-Type: application/json", *extra]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunked(*chunks: bytes, content_type: bytes = b"text/event-stream") -> bytes:
    """A whole chunked response."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type
    head += b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(chunk_of(c) for c in chunks) + b"0\r\n\r\n"


def chunk_of(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
