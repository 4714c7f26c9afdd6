"""The head's framing fields (gateway/http/head_fields.py), on the protocol over a fake
transport: Content-Length normalised once as parsed, smuggling heads refused, Host
required once (RFC 9112 §3.2), no ``100 Continue`` to an HTTP/1.0 client (RFC 9110
§10.1.1), and what a hostile client tried that llhttp already refuses."""

from __future__ import annotations

import dataclasses
import tracemalloc
from typing import Any

import orjson
import pytest

from gateway.http.head_fields import MAX_HEADER_FIELDS
from tests.unit.http import test_connections
from tests.unit.http.test_connections import Connection, error_code, get
from tests.unit.http.test_edge_hunt_framing import Gate


def answered_400(conn: Connection) -> str:
    """The 400's message, after checking that it was the only answer and closed."""
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 400 "), written[:200]
    assert written.count(b"\r\n\r\n") == 1 and b"connection: close\r\n" in written
    assert error_code(written) == "invalid_http_request" and conn.transport.closed
    message: str = orjson.loads(written.partition(b"\r\n\r\n")[2])["error"]["message"]
    return message


@pytest.mark.parametrize("padding", [b" ", b"\t", b" \t "])
async def test_a_content_length_reaches_the_app_without_the_whitespace_after_it(
    padding: bytes,
) -> None:
    """llhttp drops whitespace before a value, not after: ``"2 "`` reached every reader,
    each of which stripped it on its own (the body budget and read_body)."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(list(scope["headers"]))
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    conn = Connection()
    conn.protocol.app = app
    conn.send(
        b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: %s2%s\r\n\r\n{}" % (padding, padding)
    )
    await conn.settle()
    assert seen == [[(b"host", b"x"), (b"content-length", b"2")]]
    assert conn.transport.written.startswith(b"HTTP/1.1 204 ")


SMUGGLING_HEADS = {
    "two different lengths": b"content-length: 2\r\ncontent-length: 3",
    "two lengths, spelt apart": b"Content-Length: 2\r\ncontent-length: 3",
    "the same length twice": b"content-length: 2\r\ncontent-length: 2",
    "a list of lengths": b"content-length: 2, 2",
    "a plus sign": b"content-length: +2",
    "a minus sign": b"content-length: -2",
    "a letter after the digits": b"content-length: 2a",
    "hexadecimal": b"content-length: 0x2",
    "a space inside": b"content-length: 1 2",
    "past 64 bits": b"content-length: 99999999999999999999",
    "length then chunked": b"content-length: 3\r\ntransfer-encoding: chunked",
    "chunked then length": b"transfer-encoding: chunked\r\ncontent-length: 3",
    "chunked twice": b"transfer-encoding: chunked\r\ntransfer-encoding: chunked",
    "chunked not last": b"transfer-encoding: chunked, gzip",
    "a space before the colon": b"transfer-encoding : chunked",
    "a tab before the colon": b"transfer-encoding\t: chunked",
    "a vertical tab in a coding": b"transfer-encoding: \x0bchunked",
    "an empty length": b"content-length: ",
    "an obs-fold line": b"x-a: b\r\n c",
    "a NUL in a value": b"x-a: b\x00c",
    "a CR in a value": b"x-a: b\rc",
    "a control byte in a value": b"x-a: b\x01c",
    "a DEL in a value": b"x-a: b\x7fc",
    "a line with no colon": b"x-no-colon",
    "an empty name": b": b",
    "a name with parentheses": b"x(a): b",
}


@pytest.mark.parametrize("fields", SMUGGLING_HEADS.values(), ids=SMUGGLING_HEADS.keys())
async def test_an_ambiguous_or_malformed_head_is_refused_and_the_connection_closed(
    fields: bytes,
) -> None:
    """Request smuggling (RFC 9112 §6.3, §5): two readers of such a head could frame its
    body differently. llhttp refuses each of these (checked here so that no parser
    setting or upgrade lets one through): a 400, the close, nothing reaches the app."""
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\n%s\r\n\r\n2\r\nab\r\n0\r\n\r\n" % fields)
    await conn.settle()
    answered_400(conn)
    assert conn.app.paths == []


@pytest.mark.parametrize(
    "fields",
    [
        b"transfer-encoding: gzip, chunked",
        b"transfer-encoding: gzip\r\ntransfer-encoding: chunked",
        b"transfer-encoding: gzip",
        b"transfer-encoding: identity\r\ncontent-length: 2",
    ],
    ids=["gzip then chunked", "gzip in a field of its own", "gzip alone", "identity"],
)
async def test_a_transfer_coding_other_than_chunked_is_refused(fields: bytes) -> None:
    """RFC 9112 §6.1: a coding the server does not understand gets 501. ``gzip, chunked``
    was read as if the body were not encoded; a coding without ``chunked`` last was
    refused only once the application had started. Then the close; nothing reaches the
    app."""
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\n%s\r\n\r\n2\r\nab\r\n0\r\n\r\n" % fields)
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 501 "), written[:200]
    assert written.count(b"\r\n\r\n") == 1 and conn.transport.closed
    assert error_code(written) == "unsupported_transfer_encoding"
    assert conn.app.paths == []


@pytest.mark.parametrize(
    "request_line",
    [
        b"get /p HTTP/1.1",  # a method in lower case
        b"GET /p http/1.1",  # a version in lower case
        b"GET /p HTTP/1.2",
        b"PRI * HTTP/2.0",
        b"FOO /p HTTP/1.1",
        b"GET\t/p HTTP/1.1",
        b"GET /p q HTTP/1.1",
        b"GET /p\x00 HTTP/1.1",
        b"CONNECT evil:443 HTTP/1.1",
    ],
)
async def test_a_request_line_that_is_not_http_1_1_is_refused(request_line: bytes) -> None:
    conn = Connection()
    conn.send(request_line + b"\r\nhost: x\r\n\r\n")
    await conn.settle()
    answered_400(conn)
    assert conn.app.paths == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (b"", "An HTTP/1.1 request must have a Host header."),
        (b"host: a\r\nhost: b\r\n", "The request has more than one Host header."),
        (b"host: a\r\nHost: a\r\n", "The request has more than one Host header."),
        (b"HOST: a\r\nx-a: b\r\nhost: c\r\n", "The request has more than one Host header."),
    ],
)
async def test_a_request_without_one_host_is_refused(fields: bytes, message: str) -> None:
    """RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without a Host
    field and to any request with more than one; both were served."""
    conn = Connection()
    conn.send(b"GET /p HTTP/1.1\r\n%s\r\n" % fields)
    await conn.settle()
    assert answered_400(conn) == message
    assert conn.app.paths == []


async def test_two_hosts_in_an_http_1_0_request_are_refused_too() -> None:
    conn = Connection()
    conn.send(b"GET /p HTTP/1.0\r\nhost: a\r\nhost: b\r\n\r\n")
    await conn.settle()
    assert answered_400(conn) == "The request has more than one Host header."


@pytest.mark.parametrize(
    "head",
    [
        b"GET /p HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
        b"GET /p HTTP/1.1\r\nhost:\r\n\r\n",  # an empty one is valid (no authority)
        b"GET http://example/p HTTP/1.1\r\nhost: other\r\n\r\n",  # absolute form
    ],
)
async def test_requests_with_a_valid_host_are_served(head: bytes) -> None:
    conn = Connection()
    conn.send(head)
    await conn.settle()
    assert conn.app.paths == ["/p"] and conn.transport.written.startswith(b"HTTP/1.1 200 ")


async def test_every_request_on_a_connection_needs_its_own_host() -> None:
    """The count is per request: a Host among a chunked body's trailers counts neither
    for that request nor for the next one."""
    conn = Connection()
    conn.send(
        b"POST /0 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\nhost: y\r\n\r\n" + get("/1")
    )
    for _ in range(3):
        await conn.settle()
    assert conn.app.paths == ["/0", "/1"] and not conn.transport.closed
    conn.send(b"GET /2 HTTP/1.1\r\nx-a: b\r\n\r\n")
    await conn.settle()
    assert conn.app.paths == ["/0", "/1"] and conn.transport.closed
    assert conn.transport.written.count(b"HTTP/1.1 200 ") == 2
    assert conn.transport.written.endswith(b'"code":"invalid_http_request"}}')


async def test_a_request_without_host_behind_one_being_answered_waits_for_its_answer() -> None:
    """Refused as bytes that are not HTTP are: the requests before it are answered, then
    the connection closed, with no 400 the client would take for their answer."""
    conn = Connection()
    gate = Gate()
    conn.protocol.app = gate
    conn.send(get("/valid") + b"GET /no-host HTTP/1.1\r\n\r\n")
    await conn.settle()
    assert conn.transport.written == b"" and not conn.transport.closed
    gate.open.set()
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 200 ") and written.endswith(b"\r\n\r\nok")
    assert b"400" not in written and conn.transport.closed and gate.paths == ["/valid"]


@pytest.mark.parametrize("connection", [b"", b"connection: keep-alive\r\n"])
async def test_an_http_1_0_client_expecting_100_continue_gets_none(connection: bytes) -> None:
    """RFC 9110 §10.1.1: a server MUST NOT send a 100 to an HTTP/1.0 client; uvicorn did
    (and an HTTP/1.0 client would read it as the answer). The body is read as sent."""
    conn = Connection()
    conn.send(
        b"POST /p HTTP/1.0\r\n%sexpect: 100-continue\r\ncontent-length: 2\r\n\r\n" % connection
    )
    await conn.settle()
    assert conn.transport.written == b""
    conn.send(b"{}")
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in written
    assert conn.app.bodies == [b"{}"]


@pytest.mark.parametrize("expect", [b"100-continue", b"100-Continue", b"100-continue \t"])
async def test_an_http_1_1_client_expecting_100_continue_still_gets_it(expect: bytes) -> None:
    """Whitespace after the expectation is not part of it: with it, no 100 was sent, and
    the client waited for one (curl: a second; others until the body deadline)."""
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\nexpect: %s\r\ncontent-length: 2\r\n\r\n" % expect)
    await conn.settle()
    assert conn.transport.written == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_a_head_with_too_many_fields_is_431_and_never_reaches_the_app() -> None:
    """``server.max_header_bytes`` bounds bytes, not fields: 64 KiB of ``a:b`` lines were
    13,102 fields, 1.3 MB of objects held per request (hostile-client hunt)."""
    fields = b"a:b\r\n" * MAX_HEADER_FIELDS  # with host: one too many
    conn = Connection()
    conn.send(b"GET /p HTTP/1.1\r\nhost: x\r\n%s\r\n" % fields)
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 431 ") and conn.transport.closed
    assert error_code(written) == "request_head_too_large" and conn.app.paths == []


async def test_a_head_with_as_many_fields_as_allowed_is_served() -> None:
    fields = b"a:b\r\n" * (MAX_HEADER_FIELDS - 1)
    conn = Connection()
    conn.send(b"GET /p HTTP/1.1\r\nhost: x\r\n%s\r\n" % fields)
    await conn.settle()
    assert conn.app.paths == ["/p"] and conn.transport.written.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /p\r\n\r\n",
        b"GET /p HTTP/0.9\r\n\r\n",
        b"GET /p HTTP/0.9\r\nhost: x\r\n\r\n",
        b"GET /p HTTP/0.9\r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
    ],
    ids=["no version", "0.9", "0.9 with one Host", "0.9 kept alive"],
)
async def test_an_http_0_9_request_is_refused(head: bytes) -> None:
    """llhttp takes ``GET /p`` as HTTP/0.9 (no version, no fields, no Host), and uvicorn
    handed the app an ``http_version`` ASGI does not have. One with a single ``Host``
    passed the head's checks, which ran only for a head without exactly one Host (it
    was served, a 200)."""
    conn = Connection()
    conn.send(head)
    await conn.settle()
    assert "HTTP/0.9" in answered_400(conn)
    assert conn.app.paths == []


@pytest.mark.parametrize(
    "head",
    [
        b"GET /p HTTP/2.0\r\nhost: x\r\n\r\n",
        b"GET /p HTTP/2.0\r\n\r\n",
        b"GET /p HTTP/2.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
    ],
    ids=["2.0", "2.0 without Host", "2.0 kept alive"],
)
async def test_an_http_2_request_line_is_refused(head: bytes) -> None:
    """llhttp parses ``HTTP/2.0`` (it refuses 1.2 and 3.0) and it was served, as version
    2.0, with no Host required and kept alive: 505, then the close."""
    conn = Connection()
    conn.send(head)
    await conn.settle()
    written = conn.transport.written
    assert written.startswith(b"HTTP/1.1 505 "), written[:200]
    assert written.count(b"\r\n\r\n") == 1 and conn.transport.closed
    assert error_code(written) == "http_version_not_supported"
    assert conn.app.paths == []


async def test_trailers_never_join_the_requests_headers() -> None:
    """uvicorn appended a chunked body's trailers to the request's header list after the
    app had started with it: a route reading a header after the body (passthrough's
    content-type) saw one the head never had."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    conn = Connection()
    conn.protocol.app = app
    conn.send(
        b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\ncontent-type: text/evil\r\nauthorization: Bearer sk-late\r\n\r\n"
    )
    for _ in range(3):
        await conn.settle()
    assert seen == [[(b"host", b"x"), (b"transfer-encoding", b"chunked")]]
    assert conn.transport.written.startswith(b"HTTP/1.1 204 ")


async def test_trailers_are_not_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropped from the request's headers, a chunked body's trailers were still kept, in
    a list of their own, until the connection's next request or its close: 12,000 tiny
    ones (within the default 64 KiB ``max_header_bytes``, sent after a wrong key's 401,
    no key needed) held 1.4 MB per idle keep-alive connection for 75 s, what the
    100-field cap on heads stopped."""
    limits = dataclasses.replace(test_connections.LIMITS, max_header_bytes=64 * 1024)
    monkeypatch.setattr(test_connections, "LIMITS", limits)
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n")
    await conn.settle()
    trailers = b"0\r\n" + b"a:b\r\n" * 12_000 + b"\r\n"
    tracemalloc.start()
    try:
        conn.send(trailers)
        await conn.settle()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert conn.transport.written.startswith(b"HTTP/1.1 200 ") and not conn.transport.closed
    assert held < 64 * 1024, held  # at most about the bytes read (1.4 MB when kept)
