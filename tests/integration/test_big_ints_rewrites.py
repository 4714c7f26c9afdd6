"""Integers beyond 64 bits over real HTTP: a client's body that the gateway writes anew
(a model served under another name, the output cap of a key with a token limit, a
clamped ``priority``) reaches the engine with each such integer exactly as written,
on chat, completions, embeddings and vLLM's own routes. Before, the engine got
orjson's float (``1.8446744073709552e+19``).

The gateway's one endpoint is a recording proxy in front of a stub engine, so the test
sees the bytes each engine request really carried."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.helpers.recording_proxy import RecordingProxy, recording_proxy
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

ALIAS = "big-ints-alias"
KEY = "sk-big-ints-rewrites-01"
SCHEMA = (
    b'"x_schema": {"maximum": 18446744073709551616, "minimum": -9223372036854775809, '
    b'"multipleOf": 123456789012345678901234567890}'
)
BODIES = {
    "/v1/chat/completions": b'"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000',
    "/v1/completions": b'"prompt": "hi", "max_tokens": 5000, "priority": -5',
    "/v1/embeddings": b'"input": "hi"',
    "/tokenize": b'"prompt": "hi", "priority": -5',
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--scheduling-policy", "priority")


@pytest.fixture(scope="module")
def proxy(engine: Stub) -> Iterator[RecordingProxy]:
    with recording_proxy(engine.url) as recording:
        yield recording


@pytest.fixture(scope="module")
def gateway(proxy: RecordingProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": ALIAS, "upstream_model": STUB_MODEL, "endpoints": [proxy.url]}],
        "auth": {
            "enabled": True,
            "keys": [{"name": "team", "key": KEY, "tpm": 1000, "priority": 3}],
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("big-ints"))


@pytest.mark.parametrize("path", list(BODIES))
def test_a_rewritten_body_carries_big_integers_exactly(
    gateway: Gateway, proxy: RecordingProxy, path: str
) -> None:
    raw = b'{"model": "%s", %s, %s}' % (ALIAS.encode(), BODIES[path], SCHEMA)
    before = len(proxy.raw)
    answer = httpx.post(
        gateway.url + path,
        content=raw,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    holds_soon(lambda: any(b"x_schema" in body for body in proxy.raw[before:]))
    sent = next(body for body in proxy.raw[before:] if b"x_schema" in body)
    written = orjson.loads(sent)
    assert written["model"] == STUB_MODEL  # written anew
    assert written.get("max_tokens", 0) < 5000  # capped to the key's budget where asked
    assert written.get("priority", 3) == 3  # never earlier than the key's tier
    assert b'"maximum":18446744073709551616' in sent
    assert b'"minimum":-9223372036854775809' in sent
    assert b'"multipleOf":123456789012345678901234567890' in sent
    assert b"e+" not in sent
