"""A hostile tenant against rollouts it may not use, through a real gateway and a stub
engine: a rollout whose every variant is at weight 0 (two canaries, both rolled
back) answered a
key without permission for it 503 ``engine_unavailable`` on chat, completions and
embeddings, where a name that does not exist gets 404 ``model_not_found``: the key
learnt the rollout's name and its state by trying names. It must get the 404 any name
it may not use gets, on every route, and no ``x-vgate-variant``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

STABLE, CANARY = "e2-stable", "e2-canary"
CLOSED = "e2-closed"  # a rollout with every variant at weight 0
OUTSIDER = "sk-e2-outsider-0123456789"  # may use STABLE only
INSIDER = "sk-e2-insider-0123456789"  # may use the rollout
OPERATOR = "sk-e2-operator-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STABLE, "--model", CANARY)


@pytest.fixture(scope="module")
def gateway(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [
            {"name": STABLE, "endpoints": [engine.url]},
            {"name": CANARY, "endpoints": [engine.url]},
        ],
        "rollouts": [
            {
                "model": CLOSED,
                "variants": [
                    {"model": STABLE, "weight": 1, "canary": True},
                    {"model": CANARY, "weight": 1, "canary": True},
                ],
            }
        ],
        "auth": {
            "enabled": True,
            "admin_key": OPERATOR,
            "keys": [
                {"name": "outsider", "key": OUTSIDER, "models": [STABLE]},
                {"name": "insider", "key": INSIDER, "models": [CLOSED]},
            ],
        },
    }
    for gateway in start_gateway(config, tmp_path_factory.mktemp("evasion2-rollouts")):
        yield closed_rollout(gateway)


def closed_rollout(gateway: Gateway) -> Gateway:
    """``gateway`` once the operator rolled back every variant of the rollout."""
    closed = httpx.post(  # the operator rolls back both variants, canaries alike
        f"{gateway.operator_url}/admin/rollouts/{CLOSED}/rollback",
        headers={"Authorization": f"Bearer {OPERATOR}"},
    )
    assert closed.status_code == 200, closed.text
    holds_soon(
        lambda: ask(gateway, INSIDER, "/v1/chat/completions", CLOSED).status_code == 503,
        message="the rollout never closed",
    )
    return gateway


BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/completions": {"prompt": "hi", "max_tokens": 2},
    "/v1/embeddings": {"input": "hi"},
    "/v1/responses": {"input": "hi", "max_output_tokens": 2},
}


def ask(gateway: Gateway, secret: str, path: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{path}",
        json={"model": model, **BODIES[path]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )


@pytest.mark.parametrize("path", list(BODIES))
def test_a_closed_rollout_is_a_404_to_a_key_that_may_not_use_it(
    gateway: Gateway, path: str
) -> None:
    unknown = ask(gateway, OUTSIDER, path, "e2-no-such-model")
    assert unknown.status_code == 404, unknown.text
    closed = ask(gateway, OUTSIDER, path, CLOSED)
    assert closed.status_code == 404, closed.text  # was 503 engine_unavailable
    assert closed.json()["error"]["code"] == "model_not_found"
    assert closed.json()["error"]["type"] == unknown.json()["error"]["type"]
    assert "x-vgate-variant" not in closed.headers
    assert "retry-after" not in closed.headers


def test_the_key_allowed_the_rollout_is_still_told_it_is_closed(gateway: Gateway) -> None:
    """The operator's answer for a rollout with nothing to serve it is unchanged for
    the keys that may use it."""
    answer = ask(gateway, INSIDER, "/v1/chat/completions", CLOSED)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "engine_unavailable"
