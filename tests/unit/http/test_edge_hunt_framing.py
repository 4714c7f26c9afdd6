"""Hostile-client hunt at the HTTP edge, round 2: framing the first pass missed.

Bytes that are not HTTP, read together with a request the gateway is still answering
(pipelined in one write), were refused with a 400 written at once: the client took
it for the answer to its earlier, valid request, whose real answer was then cut off
by the close. Now the requests before the bad bytes are answered, then the
connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.http.test_connections import Connection, get


class Gate:
    """An app that answers each request only once :attr:`open` is set."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await receive()  # the (empty) body
        await self.open.wait()
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_bad_bytes_after_a_request_being_answered_wait_for_its_answer() -> None:
    conn = Connection()
    gate = Gate()
    conn.protocol.app = gate
    conn.send(get("/valid") + b"NOT HTTP AT ALL\r\n\r\n")
    await conn.settle()
    assert conn.transport.written == b""  # no 400 ahead of the answer it would stand for
    assert not conn.transport.closed
    gate.open.set()
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 200 ") and written.endswith(b"\r\n\r\nok")
    assert b"connection: close\r\n" in written
    assert conn.transport.closed and gate.paths == ["/valid"]


async def test_bad_bytes_after_pipelined_requests_wait_for_all_their_answers() -> None:
    conn = Connection()
    gate = Gate()
    conn.protocol.app = gate
    conn.send(get("/0") + get("/1") + b"\x16\x03\x01 not http\r\n\r\n")
    await conn.settle()
    conn.send(b"more bytes that are not HTTP\r\n\r\n")  # refused again, quietly
    assert conn.transport.written == b"" and not conn.transport.closed
    gate.open.set()
    for _ in range(3):
        await conn.settle()
    written = conn.transport.written
    assert written.count(b"HTTP/1.1 200 ") == 2 and b"400" not in written
    assert gate.paths == ["/0", "/1"] and conn.transport.closed


async def test_bad_bytes_with_nothing_being_answered_still_get_a_400() -> None:
    conn = Connection()
    conn.send(get("/first"))
    await conn.settle()
    conn.send(b"NOT HTTP AT ALL\r\n\r\n")
    written = conn.transport.written
    assert written.count(b"HTTP/1.1 200 ") == 1
    assert written.index(b"HTTP/1.1 400 ") > written.index(b"HTTP/1.1 200 ")
    assert conn.transport.closed
