"""Review: an engine that refuses the gateway's credentials is the gateway's failure.

An engine answers 401 when the key the gateway sends it is wrong or missing (a
rotated ``api_key``, a typo in ``api_key_env``). Passed on as it came, the client
got a 401 ``authentication_error``: the official SDK raises ``AuthenticationError``,
and clients conclude that *their* key is bad (some drop it, or stop retrying),
when their key was accepted and the gateway's own configuration is at fault.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

ENGINE_KEY = "engine-key-review-0123456789"
CLIENT_KEY = "client-key-review-abcdefghij"
MODEL = "review-keyed-model"


@pytest.fixture(scope="module")
def keyed_stub() -> Iterator[Stub]:
    yield from start_stub("--model", MODEL, "--api-key", ENGINE_KEY)


@pytest.fixture(scope="module")
def misconfigured_gateway(
    keyed_stub: Stub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": MODEL, "endpoints": [keyed_stub.url], "api_key": "not-the-engine-key"}],
        "auth": {"enabled": True, "keys": [{"name": "client", "key": CLIENT_KEY}]},
        "upstream": {"health_interval_s": 0.2},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("review-keyed"))


def test_an_engine_refusing_the_gateway_key_is_not_the_clients_auth_error(
    misconfigured_gateway: Gateway,
) -> None:
    client = openai.OpenAI(
        base_url=misconfigured_gateway.base_url, api_key=CLIENT_KEY, max_retries=0
    )
    with pytest.raises(openai.APIStatusError) as error:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=1)
    assert not isinstance(error.value, openai.AuthenticationError)
    assert error.value.status_code == 502
    body = error.value.body
    assert isinstance(body, dict) and body.get("type") != "authentication_error"
    # The engine's own words say nothing useful here, and the gateway's key is never shown.
    assert "not-the-engine-key" not in str(body)
