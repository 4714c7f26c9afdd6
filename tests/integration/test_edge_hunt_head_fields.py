"""Hostile-client hunt at the HTTP edge, round 3: request heads, over raw sockets
against a real gateway (auth on, stub engine). The protocol-level tests are in
tests/unit/http/test_head_fields.py; these show the same end to end.

- An HTTP/1.1 request without ``Host``, or any with two, was served; RFC 9112 §3.2
  says 400. Now 400 in OpenAI's shape, and the close.
- An HTTP/1.0 client sending ``Expect: 100-continue`` got ``100 Continue`` ahead of
  its answer (RFC 9110 §10.1.1: a server MUST NOT); now only the answer.
- A head of thousands of tiny fields was parsed into as many objects, held for the
  request's life; now more than 100 fields get 431.

Already right, checked here so that it stays so: ``Content-Length`` with
``Transfer-Encoding``, a lower-case method, ``TRACE`` (405: no route has it), and a
request in absolute form (served as its path).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway
from tests.integration.test_edge_hunt_raw_sockets import COMPLETION, read_until_closed

KEY = "sk-edge-hunt-heads-0123456789"


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": {"enabled": True, "keys": [{"name": f"k-{uuid.uuid4().hex[:6]}", "key": KEY}]},
    }
    yield from start_gateway(config, Path(tmp_path_factory.mktemp("edge-hunt-heads")))


def exchange(gateway: Gateway, data: bytes) -> bytes:
    """Send ``data`` on a new connection; everything received until the gateway closes."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def completion(first_line: bytes, *fields: bytes, body: bytes = COMPLETION) -> bytes:
    head = [
        first_line,
        b"authorization: Bearer " + KEY.encode(),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *fields,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def refusal(received: bytes, status: bytes) -> dict[str, str | None]:
    """The OpenAI error of the one answer in ``received``, checked to be ``status``."""
    assert received.startswith(b"HTTP/1.1 " + status + b" "), received[:300]
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in head + b"\r\n"
    error: dict[str, str | None] = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


POST = b"POST /v1/chat/completions HTTP/1.1"


def test_a_request_without_host_is_refused(gateway: Gateway) -> None:
    error = refusal(exchange(gateway, completion(POST)), b"400")
    assert error["code"] == "invalid_http_request" and "Host" in str(error["message"])


def test_a_request_with_two_hosts_is_refused(gateway: Gateway) -> None:
    received = exchange(gateway, completion(POST, b"host: a", b"host: b"))
    assert refusal(received, b"400")["message"] == "The request has more than one Host header."


def test_a_request_with_one_host_is_served(gateway: Gateway) -> None:
    received = exchange(gateway, completion(POST, b"host: a"))
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]


def test_an_http_1_0_client_expecting_100_continue_gets_only_its_answer(
    gateway: Gateway,
) -> None:
    received = exchange(
        gateway, completion(b"POST /v1/chat/completions HTTP/1.0", b"expect: 100-continue")
    )
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]
    assert b"100 Continue" not in received
    assert orjson.loads(received.partition(b"\r\n\r\n")[2])["object"] == "chat.completion"


def test_a_head_of_too_many_fields_is_431(gateway: Gateway) -> None:
    fields = [b"x-f%d: v" % n for n in range(200)]
    received = exchange(gateway, completion(POST, b"host: a", *fields))
    assert refusal(received, b"431")["code"] == "request_head_too_large"


def test_content_length_with_transfer_encoding_is_refused(gateway: Gateway) -> None:
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(COMPLETION), COMPLETION)
    head = completion(POST, b"host: a", b"transfer-encoding: chunked", body=b"")
    received = exchange(gateway, head + chunked)
    assert refusal(received, b"400")["code"] == "invalid_http_request"


def test_a_lower_case_method_is_refused(gateway: Gateway) -> None:
    received = exchange(gateway, completion(b"post /v1/chat/completions HTTP/1.1", b"host: a"))
    assert refusal(received, b"400")["code"] == "invalid_http_request"


def test_trace_is_not_served(gateway: Gateway) -> None:
    head = b"TRACE /v1/models HTTP/1.1\r\nhost: a\r\nauthorization: Bearer %s\r\n" % KEY.encode()
    received = exchange(gateway, head + b"connection: close\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 405 "), received[:300]
    assert KEY.encode() not in received  # nothing of the request echoed (no XST)


def test_a_request_in_absolute_form_is_served_as_its_path(gateway: Gateway) -> None:
    received = exchange(
        gateway, completion(b"POST http://elsewhere/v1/chat/completions HTTP/1.1", b"host: a")
    )
    assert received.startswith(b"HTTP/1.1 200 "), received[:300]


@pytest.mark.parametrize(
    "data",
    [b"NOT HTTP AT ALL\r\n\r\n", completion(POST), completion(POST, b"host: a", b"host: b")],
)
def test_a_refused_head_gets_an_x_request_id_as_every_answer_does(
    gateway: Gateway, data: bytes
) -> None:
    """The answers the connection writes itself (no request reached the application)
    carried no ``x-request-id``, against README's "every response carries one"."""
    received = exchange(gateway, data)
    refusal(received, b"400")
    head = received.partition(b"\r\n\r\n")[0].split(b"\r\n")
    ids = [line[len(b"x-request-id: ") :] for line in head if line.startswith(b"x-request-id: ")]
    assert len(ids) == 1 and ids[0].startswith(b"req_") and len(ids[0]) > 8, head
    assert exchange(gateway, data) != received  # a fresh id each time
