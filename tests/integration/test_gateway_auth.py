"""API keys declared in the config: 401 without a good key, 403 for a model the key may
not use, and /v1/models listing only what the key may use."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

ADMIN_KEY = "sk-team-a-0123456789"
NARROW_KEY = "sk-team-b-9876543210"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def secured(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [stub.url]},
            {"name": "other-model", "endpoints": [stub.url], "upstream_model": STUB_MODEL},
        ],
        "auth": {
            "enabled": True,
            "keys": [
                {"name": "team-a", "key": ADMIN_KEY},
                {"name": "team-b", "key": NARROW_KEY, "models": [STUB_MODEL]},
            ],
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("auth"))


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def test_valid_keys_complete_and_stream(secured: Gateway) -> None:
    reply = client(secured, ADMIN_KEY).chat.completions.create(
        model="other-model", messages=MESSAGES
    )
    assert reply.choices[0].message.content
    stream = client(secured, NARROW_KEY).chat.completions.create(
        model=STUB_MODEL, messages=MESSAGES, stream=True
    )
    assert any(c.choices and c.choices[0].delta.content for c in stream)


def test_wrong_key_is_401_invalid_api_key(secured: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(secured, "sk-not-a-key").chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("headers", [{}, {"Authorization": ADMIN_KEY}, {"Authorization": "Bearer"}])
def test_missing_or_malformed_authorization_is_401(
    secured: Gateway, headers: dict[str, str]
) -> None:
    body = {"model": STUB_MODEL, "messages": MESSAGES}
    response = httpx.post(f"{secured.base_url}/chat/completions", json=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_auth_comes_before_body_validation(secured: Gateway) -> None:
    response = httpx.post(f"{secured.base_url}/chat/completions", content=b"{not json")
    assert response.status_code == 401


def test_model_not_allowed_is_403(secured: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(secured, NARROW_KEY).chat.completions.create(model="other-model", messages=MESSAGES)
    error = caught.value.response.json()["error"]
    assert error["code"] == "model_not_allowed"
    assert "team-b" in error["message"]


def test_models_lists_only_what_the_key_may_use(secured: Gateway) -> None:
    assert {m.id for m in client(secured, ADMIN_KEY).models.list().data} == {
        STUB_MODEL, "other-model",
    }  # fmt: skip
    assert [m.id for m in client(secured, NARROW_KEY).models.list().data] == [STUB_MODEL]
    with pytest.raises(openai.AuthenticationError):
        client(secured, "sk-not-a-key").models.list()


def test_failures_are_counted_and_keys_never_exposed(secured: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(secured, "sk-wrong-key").models.list()
    with pytest.raises(openai.PermissionDeniedError):
        client(secured, NARROW_KEY).chat.completions.create(model="other-model", messages=MESSAGES)
    metrics = secured.metrics()
    assert 'vgate_auth_failures_total{reason="invalid_key"}' in metrics
    assert 'vgate_auth_failures_total{reason="model_not_allowed"}' in metrics
    assert ADMIN_KEY not in metrics
    assert NARROW_KEY not in metrics


def test_health_needs_no_key_and_metrics_are_served_to_operators(secured: Gateway) -> None:
    assert httpx.get(f"{secured.url}/health").status_code == 200
    assert httpx.get(f"{secured.url}/metrics").status_code == 404  # not on the public port
    assert httpx.get(f"{secured.operator_url}/metrics").status_code == 200
