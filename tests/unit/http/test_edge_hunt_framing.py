"""Hostile-client hunt at the HTTP edge, round 2: framing the first pass missed.

Bytes that are not HTTP, read together with a request the gateway is still answering
(pipelined in one write), were refused with a 400 written at once: the client took
it for the answer to its earlier, valid request, whose real answer was then cut off
by the close. Now the requests before the bad bytes are answered, then the
connection is closed.

A request that waits for ``100 Continue`` before sending its body, refused before
the body was asked for (a wrong key): the connection was kept, so the client's next
request was read as that body and never answered. Now the refusal closes it.

``content-length: 81 `` (whitespace after the value, which is not part of it): llhttp
reads the body by it, but the completion routes refused the request with a 400.

An upgrade in a head pipelined behind another request in the same read (the rewrite
renames only a read's first head) got its 400 at once, ahead of that request's
answer; now it gets it in its turn.

Requests pipelined before a graceful shutdown began are run after it; one still
running at the shutdown deadline got uvicorn's plain-text 500 and a traceback, not
the 503 ``shutting_down`` the request being answered then gets.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.http.client_watch import ClientWatch
from gateway.http.context import completion_headers, read_body
from gateway.http.direct_cycle import direct_cycle
from gateway.http.hot_routes import Endpoint
from tests.unit.http.test_connections import Connection, error_code, get


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


def expecting(path: str, length: int) -> bytes:
    """A POST head asking for ``100 Continue`` before its ``length`` bytes of body."""
    return b"POST %s HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: %d\r\n\r\n" % (
        path.encode(),
        length,
    )


async def refuse_unread(scope: Any, receive: Any, send: Any) -> None:
    """An early refusal through ASGI messages (a FastAPI route): no body read."""
    headers = [(b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": b"no"})


async def refuse_unread_directly(scope: Any, receive: Any, send: Any) -> None:
    """The same refusal written by the request's direct cycle (a completion route)."""
    cycle = direct_cycle(scope)
    assert cycle is not None
    await cycle.whole(401, [], b"no")


@pytest.mark.parametrize("app", [refuse_unread, refuse_unread_directly])
async def test_a_refusal_before_an_expected_body_is_asked_for_closes_the_connection(
    app: Any,
) -> None:
    """curl and others wait for ``100 Continue`` before a body; answered 401 without it,
    they send their next request, which the kept connection read as the old body: the
    client waited for an answer that never came."""
    conn = Connection()
    conn.protocol.app = app
    conn.send(expecting("/refused", 60))
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 401 ") and b"100 Continue" not in written
    assert b"connection: close\r\n" in written and conn.transport.closed


@pytest.mark.parametrize("app", [refuse_unread, refuse_unread_directly])
async def test_a_refusal_after_the_whole_expected_body_came_keeps_the_connection(
    app: Any,
) -> None:
    """The client sent its body without waiting: nothing is in doubt, the connection serves on."""
    conn = Connection()
    conn.protocol.app = app
    conn.send(expecting("/refused", 2) + b"{}")
    await conn.settle()
    conn.send(expecting("/again", 0))
    await conn.settle()
    written = conn.transport.written
    assert written.count(b"HTTP/1.1 401 ") == 2 and b"connection: close" not in written
    assert not conn.transport.closed


async def test_an_expected_body_asked_for_and_read_keeps_the_connection() -> None:
    conn = Connection()
    conn.send(expecting("/read", 2))
    await conn.settle()
    assert conn.transport.written == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"{}")
    await conn.settle()
    assert conn.app.bodies == [b"{}"] and b"HTTP/1.1 200 " in conn.transport.written
    assert b"connection: close" not in conn.transport.written and not conn.transport.closed


@pytest.mark.parametrize("padding", [b" ", b"\t", b" \t "])
async def test_a_content_length_with_whitespace_after_it_is_read(padding: bytes) -> None:
    """RFC 9110 5.5: whitespace around a field's value is not part of it. llhttp takes
    ``content-length: 2 `` (and reads two bytes of body), but hands the value on with
    its trailing whitespace, and the completion routes refused it: 400 "invalid
    Content-Length header" for a valid request."""
    read: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        declared = completion_headers(scope["headers"]).content_length
        read.append(await read_body(receive, 1024, declared))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    conn = Connection()
    conn.protocol.app = app
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 2%s\r\n\r\n{}" % padding)
    await conn.settle()
    assert read == [b"{}"] and conn.transport.written.startswith(b"HTTP/1.1 204 ")


async def test_a_request_pipelined_before_the_shutdown_is_cut_off_in_openai_shape() -> None:
    """uvicorn starts requests that were waiting (pipelined) when its graceful shutdown
    began; only the one being answered then was marked, so one of those still running
    at the deadline let the cancellation out: uvicorn's plain-text 500 and a traceback."""
    conn = Connection()
    gate = Gate()

    async def hang(scope: Any, receive: Any, watch: ClientWatch) -> Any:
        await asyncio.Event().wait()

    endpoint = Endpoint(hang)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await (gate if scope["path"] == "/first" else endpoint)(scope, receive, send)

    conn.protocol.app = app
    conn.send(get("/first") + get("/waiting"))
    await conn.settle()
    conn.protocol.shutdown()  # the graceful shutdown begins
    gate.open.set()
    await conn.settle()  # /first answered, /waiting started (and hangs)
    running = [task for task in conn.protocol.tasks if not task.done()]
    assert len(running) == 1
    running[0].cancel()  # the shutdown deadline
    await conn.settle()
    second = conn.transport.written.split(b"HTTP/1.1 ")[2]
    assert second.startswith(b"503 ") and b'"code":"shutting_down"' in second
    assert conn.transport.closed


async def test_an_upgrade_pipelined_behind_a_request_gets_its_400_in_its_turn() -> None:
    """The Upgrade rewrite renames the header only in a read's first head: a request
    pipelined behind another in the same read, with a plain ``upgrade: h2c``, stopped
    the parser and got its 400 at once, which the client read as the first request's
    answer (that answer then cut off by the close)."""
    conn = Connection()
    gate = Gate()
    conn.protocol.app = gate
    upgrading = b"GET /h2c HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
    conn.send(get("/first") + upgrading)
    await conn.settle()
    assert conn.transport.written == b"" and not conn.transport.closed
    gate.open.set()
    for _ in range(2):
        await conn.settle()
    first, _, second = conn.transport.written.partition(b"ok")
    assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close\r\n" in second and error_code(second) == "invalid_http_request"
    assert gate.paths == ["/first"] and conn.transport.closed


async def test_an_upgrade_with_nothing_before_it_still_gets_its_400_at_once() -> None:
    conn = Connection()
    conn.send(b"GET /h2c HTTP/1.1\r\nhost: x\r\nConnection: UpGrade\r\nUpGrade: h2c\r\n\r\n")
    assert conn.transport.written.startswith(b"HTTP/1.1 400 ") and conn.transport.closed


async def test_a_connection_whose_body_came_after_its_answer_is_closed_when_idle() -> None:
    """A wrong key gets its 401 before the body; the body's bytes, read after it,
    cancelled the keep-alive timer the answer had armed, and nothing armed it again:
    the connection stayed open, idle, for good (one of ``max_connections``, no key)."""
    conn = Connection(keep_alive_s=5)
    conn.protocol.app = refuse_unread
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
    await conn.settle()
    assert conn.transport.written.startswith(b"HTTP/1.1 401 ")
    conn.send(b"{}")  # the body, after the answer
    conn.clock.advance(4.0)
    assert not conn.transport.closed
    conn.clock.advance(60.0)
    assert conn.transport.closed
