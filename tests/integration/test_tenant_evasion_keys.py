"""A hostile tenant against key scopes, through a real gateway, redis-server and stub
engine: a key made at run time with ``"models": []`` must not become a key for every
model (it did: the admin API stored it as ``models: null``), and the key a request is
served as is the first ``Authorization`` header's, for its model check and its limits
alike (a second header names no other key to be checked or charged)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
OTHER_MODEL = "other-model"
OPERATOR_KEY = "sk-operator-evasion-0123456789"
NARROW_KEY = "sk-narrow-evasion-0123456789"
WIDE_KEY = "sk-wide-evasion-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--model", OTHER_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [engine.url]},
            {"name": OTHER_MODEL, "endpoints": [engine.url]},
        ],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "admin_key": OPERATOR_KEY,
            "keys": [
                {"name": f"narrow-{RUN}", "key": NARROW_KEY, "models": [STUB_MODEL]},
                {"name": f"wide-{RUN}", "key": WIDE_KEY},
            ],
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("evasion-keys"))


def admin(gateway: Gateway, method: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    return httpx.request(method, f"{gateway.operator_url}/admin/keys", headers=headers, **kwargs)


def ask(gateway: Gateway, secret: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
    )


def test_a_key_made_with_an_empty_model_list_is_refused_not_made_for_every_model(
    gateway: Gateway,
) -> None:
    name = f"empty-{RUN}"
    made = admin(gateway, "POST", json={"name": name, "models": []})
    assert made.status_code == 400, made.text  # was 201 with "models": null
    error = made.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "models" in error["message"]
    assert "key" not in made.json()
    listed = admin(gateway, "GET")
    assert listed.status_code == 200
    assert name not in [row["name"] for row in listed.json()["data"]]


def test_a_key_made_with_models_may_use_those_only(gateway: Gateway) -> None:
    made = admin(gateway, "POST", json={"name": f"one-{RUN}", "models": [STUB_MODEL]})
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    assert made.json()["models"] == [STUB_MODEL]
    assert ask(gateway, secret, STUB_MODEL).status_code == 200
    refused = ask(gateway, secret, OTHER_MODEL)
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"


def raw_request(gateway: Gateway, head: bytes, body: bytes) -> tuple[int, bytes]:
    """One request over a socket of its own (headers an HTTP client would not send)."""
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
def test_a_second_authorization_header_names_no_other_key(gateway: Gateway, path: str) -> None:
    """The narrow key first, the wide key second: served (and refused) as the narrow
    key, on the hot route and on a route FastAPI serves alike."""
    body = orjson.dumps(
        {"model": OTHER_MODEL, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    )
    if path == "/tokenize":
        body = orjson.dumps({"model": OTHER_MODEL, "prompt": "hi"})
    head = (
        b"POST %s HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" % path.encode()
        + b"Authorization: Bearer %s\r\n" % NARROW_KEY.encode()
        + b"Authorization: Bearer %s\r\n" % WIDE_KEY.encode()
    )
    status, answer = raw_request(gateway, head, body)
    assert status == 404, answer
    assert orjson.loads(answer)["error"]["code"] == "model_not_found"
