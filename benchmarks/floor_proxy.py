"""The least a Python HTTP proxy can do per request: the floor the gateway is measured against.

``python -m benchmarks.floor_proxy --port P --upstream-port U`` forwards every request
to ``127.0.0.1:U`` and relays the answer: uvloop, httptools' parsers on asyncio
protocols, keep-alive connections both ways, one write each way. Nothing else: no
routing, no headers looked at, no errors handled beyond closing, no streaming
(content-length answers only), no limits. Never a product: it shows what CPU per
request is left to a gateway's own work on this machine (see
:mod:`benchmarks.python_floor`).

With ``--redis-port R`` it first makes one Redis round trip per request (``INCR`` of
one counter, on one kept connection, awaited before the request is forwarded): the
least any design that asks Redis once per request (auth, limits, a cache lookup) can
add to the relay: two more hops between processes and Redis's own work.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import cast

import httptools
import uvloop

_HEAD = (
    b"POST %s HTTP/1.1\r\nhost: upstream\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
)
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed"))


class _Redis(asyncio.Protocol):
    """One connection to Redis; ``INCR`` calls pipelined, replies matched in order."""

    _COMMAND = b"*2\r\n$4\r\nINCR\r\n$11\r\nfloor:count\r\n"

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._partial = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:  # each reply is one line: ":N\r\n"
        lines = (self._partial + data).split(b"\r\n")
        self._partial = lines.pop()
        for _ in lines:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def incr(self) -> None:
        assert self.transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.transport.write(self._COMMAND)
        await waiter


class _Pool:
    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: list[_Upstream] = []

    async def post(self, path: bytes, body: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        conn = self._idle.pop() if self._idle else None
        if conn is None:
            _, conn = await loop.create_connection(_Upstream, "127.0.0.1", self._port)
        assert conn.transport is not None
        conn.waiter = loop.create_future()
        conn.transport.write(_HEAD % (path, len(body)) + body)
        answer = await conn.waiter
        self._idle.append(conn)
        return answer


class _Client(asyncio.Protocol):
    """One client connection; requests answered in order."""

    def __init__(self, pool: _Pool, redis: _Redis | None) -> None:
        self._pool = pool
        self._redis = redis
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._body: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        task = asyncio.ensure_future(self._answer(self._url, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, path: bytes, body: bytes) -> None:
        if self._redis is not None:
            await self._redis.incr()
        answer = await self._pool.post(path, body)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(_ANSWER % len(answer) + answer)


async def serve(port: int, upstream_port: int, redis_port: int | None) -> None:
    loop = asyncio.get_running_loop()
    pool = _Pool(upstream_port)
    redis = None
    if redis_port is not None:
        _, redis = await loop.create_connection(_Redis, "127.0.0.1", redis_port)
    server = await loop.create_server(lambda: _Client(pool, redis), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--redis-port", type=int, help="one INCR per request first")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream_port, args.redis_port))


if __name__ == "__main__":
    main()
