"""Hostile-client hunt at the HTTP edge, round 2, over raw sockets against a real
gateway (auth on, stub engine): what the unit tests of
tests/unit/http/test_edge_hunt_framing.py show on the protocol, end to end.

- ``Expect: 100-continue`` and a wrong key: curl waits for ``100 Continue`` before
  its body. The 401 came on a kept connection, so the next request on it was read as
  the old body and never answered; now the 401 closes the connection.
- A valid request and bytes that are not HTTP in one write: the 400 was written at
  once, ahead of the valid request's answer, which it stood for; now the valid
  request is answered, then the connection closed.
- ``content-length: N `` (whitespace after the value) is a valid request, served.
- ``upgrade: h2c`` in a request pipelined behind another in the same write (the
  rewrite renames only a read's first head): its 400 came at once, as the first
  request's answer; now it comes after that answer.
- A wrong key's 401 comes before the body; the body read after it left the
  connection with no keep-alive timer: open, idle, for good. Now it is closed
  ``keepalive_timeout_s`` after.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

KEY = "sk-edge-hunt-0123456789"
KEEPALIVE_TIMEOUT_S = 2
COMPLETION = orjson.dumps(
    {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
)


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": {"enabled": True, "keys": [{"name": f"k-{uuid.uuid4().hex[:6]}", "key": KEY}]},
        "server": {"keepalive_timeout_s": KEEPALIVE_TIMEOUT_S},
    }
    yield from start_gateway(config, Path(tmp_path_factory.mktemp("edge-hunt")))


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def post(key: str, body: bytes, *lines: bytes, length: bytes | None = None) -> bytes:
    head = [
        b"POST /v1/chat/completions HTTP/1.1",
        b"host: x",
        b"authorization: Bearer " + key.encode(),
        b"content-type: application/json",
        b"content-length: " + (length if length is not None else b"%d" % len(body)),
        *lines,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_a_wrong_key_waiting_for_100_continue_gets_its_401_and_the_close(
    gateway: Gateway,
) -> None:
    with connect(gateway) as sock:
        sock.sendall(post("sk-wrong-0123456789", b"", b"expect: 100-continue", length=b"81"))
        sock.settimeout(5)  # the 401, then the close (before: the connection stayed)
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 401 "), received[:200]
    assert b"100 Continue" not in received and b"\r\nconnection: close\r\n" in received
    assert orjson.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_api_key"


def test_a_valid_request_then_bytes_that_are_not_http_gets_its_answer(gateway: Gateway) -> None:
    with connect(gateway) as sock:
        sock.sendall(post(KEY, COMPLETION) + b"NOT HTTP AT ALL\r\n\r\n")
        received = read_until_closed(sock)
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    assert orjson.loads(received.partition(b"\r\n\r\n")[2])["object"] == "chat.completion"
    assert b"HTTP/1.1 400" not in received


def test_a_content_length_with_whitespace_after_it_is_served(gateway: Gateway) -> None:
    with connect(gateway) as sock:
        sock.sendall(post(KEY, COMPLETION, length=b"%d \t" % len(COMPLETION)))
        sock.settimeout(5)
        received = sock.recv(65536)
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]


def test_an_h2c_upgrade_pipelined_behind_a_request_gets_its_400_after_that_answer(
    gateway: Gateway,
) -> None:
    h2c = (b"connection: Upgrade, HTTP2-Settings", b"upgrade: h2c", b"http2-settings: AAMAAABkAAQ")
    with connect(gateway) as sock:
        sock.sendall(post(KEY, COMPLETION) + post(KEY, COMPLETION, *h2c))
        received = read_until_closed(sock)
    first, _, second = received.partition(b"}HTTP/1.1 ")
    assert first.startswith(b"HTTP/1.1 200 "), received[:300]
    assert orjson.loads(first.partition(b"\r\n\r\n")[2] + b"}")["object"] == "chat.completion"
    assert second.startswith(b"400 "), received[:600]
    assert orjson.loads(second.partition(b"\r\n\r\n")[2])["error"]["code"] == "invalid_http_request"


def test_a_connection_whose_body_came_after_its_401_is_closed_when_idle(gateway: Gateway) -> None:
    with connect(gateway) as sock:
        sock.sendall(post("sk-wrong-0123456789", b"", length=b"2"))
        first = sock.recv(65536)  # the 401 has begun: the body comes after its answer
        sock.sendall(b"{}")
        sock.settimeout(KEEPALIVE_TIMEOUT_S + 6)  # the close (ticks are a second apart)
        received = first + read_until_closed(sock)  # (a TimeoutError: never closed)
    assert received.startswith(b"HTTP/1.1 401 ") and received.endswith(b"}}")
