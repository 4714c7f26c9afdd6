"""The drain without resets (``gateway/http/drain_linger.py``): an idle connection is not
closed the moment a graceful shutdown begins (a request already on its way met a closed
socket: a connection error), it lingers, answers what arrives with ``connection:
close`` and closes after it, or closes when the linger ends."""

from __future__ import annotations

from gateway.http.drain_linger import LINGER_S
from tests.unit.http.test_connections import Connection

REQUEST = b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab"


async def test_a_request_arriving_as_the_drain_begins_is_answered_then_closed() -> None:
    conn = Connection()
    conn.send(REQUEST)
    await conn.settle()
    assert conn.transport.written.count(b"HTTP/1.1 200 ") == 1 and not conn.transport.closed
    conn.protocol.shutdown()  # idle: uvicorn closed it here
    assert not conn.transport.closed
    conn.send(REQUEST)  # sent before the client could know
    await conn.settle()
    assert conn.app.paths == ["/p", "/p"]
    second = conn.transport.written.split(b"HTTP/1.1 200 ")[2]
    assert b"connection: close\r\n" in second
    assert conn.transport.closed  # closed after that answer, not at the linger's end


async def test_an_idle_connection_closes_when_the_linger_ends() -> None:
    conn = Connection()
    conn.protocol.shutdown()
    conn.clock.advance(LINGER_S / 2)
    assert not conn.transport.closed
    conn.clock.advance(LINGER_S)
    assert conn.transport.closed and conn.app.paths == []


async def test_a_request_in_progress_closes_the_connection_once_answered() -> None:
    """As uvicorn did: no linger for a connection that is answering."""
    conn = Connection()
    conn.send(REQUEST[:-1])  # its body not complete: the app waits
    await conn.settle()
    conn.protocol.shutdown()
    conn.send(REQUEST[-1:])
    await conn.settle()
    assert b"connection: close\r\n" in conn.transport.written and conn.transport.closed
