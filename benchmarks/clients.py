"""HTTP clients for the load generator: a lean raw one and an aiohttp one.

``raw`` (the default) is a minimal HTTP/1.1 keep-alive client on
``asyncio.Protocol`` with llhttp (``httptools``, which uvicorn already
brings) parsing the responses, chunked SSE included. Each request is one
pre-built ``bytes`` object (request line, headers and body) written as is:
no per-request encoding at all. It exists because the load generator shares
a core with the stub engine in our benchmarks, and aiohttp's client costs
several times more CPU per request. ``aiohttp`` is kept for comparison and
as a reference implementation.

Both only ever talk to loopback addresses (see :func:`loopback_target`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections import deque
from time import perf_counter
from typing import Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import httptools

from benchmarks.measure import Exchange

#: Put in a request body, it is replaced by a value that no other request of the run
#: carries (same width, so Content-Length holds): a prompt unique per request makes
#: every request a cache miss.
UNIQUE = b"<unique-request-no.>"


class Numbered:
    """Bytes in which :data:`UNIQUE` becomes a fresh value at each :meth:`next`.

    The value is a random prefix (one per client, so that runs do not repeat each
    other's prompts) and a counter, together exactly as wide as the marker. Bytes
    without the marker come back as they are, at the cost of one call.
    """

    __slots__ = ("_count", "_parts", "_prefix", "_width")

    def __init__(self, template: bytes) -> None:
        self._parts = template.split(UNIQUE)
        self._prefix = os.urandom(4).hex()
        self._width = len(UNIQUE) - len(self._prefix)
        self._count = 0

    def next(self) -> bytes:
        if len(self._parts) == 1:
            return self._parts[0]
        self._count += 1
        return f"{self._prefix}{self._count:0{self._width}d}".encode().join(self._parts)


class Client(Protocol):
    """Sends one request per ``send``; fills and finishes the exchange, never raises."""

    async def send(self, ex: Exchange) -> None: ...

    async def close(self) -> None: ...


def loopback_target(url: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of ``url``; refuses anything that is not a loopback address."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise ValueError(f"{url!r}: only plain http:// on a loopback address is allowed")
    return host, parts.port or 80, parts.path or "/"


def raw_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    """The whole HTTP/1.1 POST, ready to write on a keep-alive connection."""
    host, port, path = loopback_target(url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._ex: Exchange | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._now = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._now = perf_counter()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._end("bad_response")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self._ex
        if ex is not None:
            self._now = perf_counter()
            self._end("broken_stream" if ex.status else "connection_closed")

    # llhttp callbacks
    def on_headers_complete(self) -> None:
        if self._ex is not None:
            self._ex.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self._ex is not None:
            self._ex.feed(body, self._now)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.closed = True
            if self._transport is not None:
                self._transport.close()
        self._end(None)

    def _end(self, error: str | None) -> None:
        ex, waiter = self._ex, self._waiter
        self._ex = self._waiter = None
        if ex is not None:
            ex.finish(self._now, error)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def exchange(self, request: bytes, ex: Exchange) -> None:
        assert self._transport is not None
        if self.closed:  # closed by the server since it was last used
            ex.finish(perf_counter(), "connection_closed")
            return
        self._ex = ex
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        ex.sent = perf_counter()
        self._transport.write(request)
        await waiter

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


class RawClient:
    """A pool of at most ``limit`` raw connections; waiters are served first come first."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], limit: int) -> None:
        self._host, self._port, _ = loopback_target(url)
        self._requests = Numbered(raw_request(url, body, headers))
        self._limit = limit
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def _acquire(self) -> _Connection:
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
                self._all.discard(conn)
            if len(self._all) < self._limit:
                placeholder = _Connection()
                self._all.add(placeholder)  # reserve the slot while connecting
                try:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        _Connection, self._host, self._port
                    )
                finally:
                    self._all.discard(placeholder)
                self._all.add(conn)
                return conn
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _release(self, conn: _Connection) -> None:
        if conn.closed:
            self._all.discard(conn)
        else:
            self._idle.append(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def send(self, ex: Exchange) -> None:
        try:
            conn = await self._acquire()
        except OSError:
            ex.finish(perf_counter(), "connect_failed")
            await asyncio.sleep(0.01)  # do not spin on a dead port
            return
        try:
            await conn.exchange(self._requests.next(), ex)
        except BaseException:
            conn.abort()  # cancelled mid-response: the connection is unusable
            raise
        finally:
            self._release(conn)

    async def close(self) -> None:
        for conn in self._all:
            conn.abort()
        self._all.clear()
        self._idle.clear()


class AiohttpClient:
    """One aiohttp session whose connector holds at most ``limit`` connections."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str], limit: int) -> None:
        loopback_target(url)
        self._url = url
        self._bodies = Numbered(body)
        self._headers = {"Content-Type": "application/json", **headers}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def send(self, ex: Exchange) -> None:
        body = self._bodies.next()
        ex.sent = perf_counter()
        try:
            async with self._session.post(self._url, data=body, headers=self._headers) as r:
                ex.status = r.status
                async for data in r.content.iter_any():
                    ex.feed(data, perf_counter())
        except aiohttp.ClientPayloadError:
            ex.finish(perf_counter(), "broken_stream")
        except (aiohttp.ClientError, OSError) as exc:
            ex.finish(perf_counter(), f"client_{type(exc).__name__}")
        else:
            ex.finish(perf_counter())

    async def close(self) -> None:
        await self._session.close()


CLIENTS = ("raw", "aiohttp")


def make_client(kind: str, url: str, body: bytes, headers: dict[str, str], limit: int) -> Client:
    """A client of ``kind`` (one of :data:`CLIENTS`); call it inside the running loop."""
    if kind == "raw":
        return RawClient(url, body, headers, limit)
    if kind == "aiohttp":
        return AiohttpClient(url, body, headers, limit)
    raise ValueError(f"unknown client {kind!r}; choose from {', '.join(CLIENTS)}")
