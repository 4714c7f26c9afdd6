"""Priority on the routes besides completions: the Responses API, embeddings and vLLM's
own routes (``/tokenize``, ``/v1/score``, ``/pooling``, ...). Whatever ``priority`` a
client writes in the body, the engine never receives an earlier one than the key's
tier (a later one is kept: a client may lower its own request); a body without one is
forwarded without one; a non-integer is the same 400 as on completions.

The gateway's one endpoint is a recording proxy in front of a stub engine, so the test
sees the body each engine request really carried.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.recording_proxy import RecordingProxy, recording_proxy
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub
from tests.integration.test_vllm_routes import JSON_ROUTES

KEYS = {
    "chat": ("sk-prio-routes-chat-01", "high"),
    "batch": ("sk-prio-routes-batch-1", "low"),
    "plain": ("sk-prio-routes-plain-1", None),
}
TIERS = {"chat": -10, "batch": 10, "plain": 0}

ROUTES: dict[str, dict[str, Any]] = {
    "/v1/responses": {"input": "hello there", "store": False},
    "/v1/embeddings": {"input": "hello there"},
    **JSON_ROUTES,  # every JSON route of vLLM's the gateway passes through
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
    keys = [
        {"name": name, "key": secret, **({"priority": tier} if tier else {})}
        for name, (secret, tier) in KEYS.items()
    ]
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [proxy.url]}],
        "auth": {"enabled": True, "keys": keys},
        "routing": {"priority_tiers": True},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("priority-routes"))


def post(gw: Gateway, path: str, key: str, **fields: Any) -> httpx.Response:
    body = {"model": STUB_MODEL, **ROUTES[path], **fields}
    headers = {"Authorization": f"Bearer {KEYS[key][0]}"}
    return httpx.post(gw.url + path, json=body, headers=headers, timeout=30)


def engine_body(proxy: RecordingProxy, since: int) -> dict[str, Any]:
    """The JSON body of the first engine request after the first ``since`` recorded
    (health checks and scrapes carry no body)."""
    deadline = time.monotonic() + 10
    while True:
        found = [b for b in proxy.bodies[since:] if isinstance(b, dict) and "model" in b]
        if found:
            return found[0]
        assert time.monotonic() < deadline, "the engine never got the request"
        time.sleep(0.02)


def sent(gw: Gateway, proxy: RecordingProxy, path: str, key: str, **fields: Any) -> Any:
    """What the engine received for one request of ``key`` to ``path``: its body."""
    before = len(proxy.bodies)
    answer = post(gw, path, key, **fields)
    assert answer.status_code == 200, answer.text
    return engine_body(proxy, before)


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_body_priority_is_clamped_to_the_keys_tier(
    gateway: Gateway, proxy: RecordingProxy, path: str
) -> None:
    assert sent(gateway, proxy, path, "plain", priority=-100)["priority"] == 0
    assert sent(gateway, proxy, path, "batch", priority=-100)["priority"] == 10
    assert sent(gateway, proxy, path, "batch", priority=-5)["priority"] == 10
    assert sent(gateway, proxy, path, "chat", priority=-(2**31))["priority"] == -10


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_client_may_still_lower_its_own_request(
    gateway: Gateway, proxy: RecordingProxy, path: str
) -> None:
    assert sent(gateway, proxy, path, "chat", priority=3)["priority"] == 3
    assert sent(gateway, proxy, path, "batch", priority=15)["priority"] == 15
    assert sent(gateway, proxy, path, "plain", priority=0)["priority"] == 0


@pytest.mark.parametrize("path", [p for p in ROUTES if p != "/v1/responses"])
def test_a_body_without_priority_is_forwarded_as_sent(
    gateway: Gateway, proxy: RecordingProxy, path: str
) -> None:
    body = sent(gateway, proxy, path, "plain")
    assert "priority" not in body
    # The key's own cache_salt (tests/integration/test_engine_prefix_salt.py), on the
    # routes that run the model; tokenizing holds no prompt blocks.
    salt = body.pop("cache_salt", None)
    assert (salt is None) is (path in ("/tokenize", "/detokenize")), salt
    assert body == {"model": STUB_MODEL, **ROUTES[path]}


def test_a_responses_body_without_priority_gets_none(
    gateway: Gateway, proxy: RecordingProxy
) -> None:
    for key in KEYS:
        body = sent(gateway, proxy, "/v1/responses", key)
        assert "priority" not in body, key
        assert body["input"] == ROUTES["/v1/responses"]["input"]


@pytest.mark.parametrize("path", list(ROUTES))
@pytest.mark.parametrize("value", ["high", 1.5, True, [1], 2**40])
def test_an_invalid_body_priority_is_an_openai_400(
    gateway: Gateway, proxy: RecordingProxy, path: str, value: object
) -> None:
    before = len(proxy.bodies)
    answer = post(gateway, path, "plain", priority=value)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_priority"
    assert error["param"] == "priority"
    assert not [b for b in proxy.bodies[before:] if isinstance(b, dict)]  # never forwarded
