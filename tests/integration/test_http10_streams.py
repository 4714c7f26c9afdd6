"""An HTTP/1.0 client (``curl --http1.0``, a proxy speaking 1.0 to its upstream) gets a
stream as bare events ended by the close: HTTP/1.0 has no chunked encoding, and before
such a client found chunk sizes mixed into the events."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import orjson

from tests.integration.conftest import STUB_MODEL, Gateway


def _raw(gateway: Gateway, request: bytes) -> bytes:
    where = urlsplit(gateway.url)
    assert where.hostname is not None and where.port is not None
    with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
        conn.sendall(request)
        received = b""
        while chunk := conn.recv(65536):  # an HTTP/1.0 answer ends with the close
            received += chunk
    return received


def test_an_http_10_stream_is_bare_events_ended_by_the_close(gateway: Gateway) -> None:
    body = orjson.dumps(
        {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    head = b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = _raw(gateway, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    status, _, rest = answer.partition(b"\r\n")
    headers, _, events = rest.partition(b"\r\n\r\n")
    assert status.split()[1] == b"200"
    assert b"transfer-encoding" not in headers.lower()
    assert events.startswith(b"data: {") and events.endswith(b"data: [DONE]\n\n")
    for event in events.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ")  # no chunk-size line anywhere
