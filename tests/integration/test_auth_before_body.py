"""A wrong key is refused from the request's headers: the gateway answers 401 before
the body arrives, so an unauthenticated client cannot make it hold a body in memory."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

KEY = "sk-before-body-0123456789"


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": {"enabled": True, "keys": [{"name": f"k-{uuid.uuid4().hex[:6]}", "key": KEY}]},
    }
    yield from start_gateway(config, Path(tmp_path_factory.mktemp("before-body")))


def head(gateway: Gateway, key: str, length: int) -> bytes:
    host = gateway.url.removeprefix("http://")
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def first_line(gateway: Gateway, key: str) -> str:
    """Send the head of a 2 MB request and 10 bytes of its body, then wait for an answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head(gateway, key, 2_000_000) + b'{"model": ')
        return sock.recv(4096).split(b"\r\n", 1)[0].decode()


def test_a_wrong_key_is_refused_before_its_body_arrives(gateway: Gateway) -> None:
    assert first_line(gateway, "sk-wrong-0123456789") == "HTTP/1.1 401 Unauthorized"


def test_a_right_key_waits_for_its_body(gateway: Gateway) -> None:
    with pytest.raises(TimeoutError):  # the gateway waits for the rest of the body
        host, port = gateway.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=1.5) as sock:
            sock.sendall(head(gateway, KEY, 2_000_000) + b'{"model": ')
            sock.recv(4096)
