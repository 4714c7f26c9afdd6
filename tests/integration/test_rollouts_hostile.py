"""Rollouts against careless and hostile clients, through a real gateway and a stub
engine (issue #17 hunt): what a client gets back names what *it* asked for, whoever
filled the cache the answer comes from."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

KEY = "sk-rollout-hostile-0123456789"
STABLE, CANARY = "h-stable", "h-canary"
ONLY_STABLE = [{"model": STABLE, "weight": 1}, {"model": CANARY, "weight": 0}]


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
            {"model": "roll-a", "variants": ONLY_STABLE},
            {"model": "roll-b", "variants": ONLY_STABLE},
        ],
        "auth": {"enabled": True, "keys": [{"name": "hostile", "key": KEY}]},
        "cache": {"enabled": True},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("hostile"))


def _ask(client: httpx.Client, model: str, text: str, **body: Any) -> httpx.Response:
    payload = {
        "model": model,
        "temperature": 0,
        "messages": [{"role": "user", "content": text}],
        **body,
    }
    reply = client.post(
        "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {KEY}"}
    )
    assert reply.status_code == 200, reply.text
    return reply


def _streamed_models(reply: httpx.Response) -> set[str]:
    models = set()
    for line in reply.text.splitlines():
        if line.startswith("data: {"):
            models.add(orjson.loads(line[len("data: ") :])["model"])
    return models


@pytest.mark.parametrize("order", [("roll-a", STABLE), (STABLE, "roll-a"), ("roll-a", "roll-b")])
def test_a_cached_answer_names_the_model_its_client_asked_for(
    gateway: Gateway, order: tuple[str, str]
) -> None:
    """Two names served by one variant (a rollout and the variant itself, or two
    rollouts) share nothing in what they answer: a hit for one must not carry the
    other's name (the variant's name, or another rollout's the key may not use)."""
    text = f"cache cross-talk {uuid.uuid4().hex}"
    first, second = order
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert _ask(client, first, text).json()["model"] == first
        assert _ask(client, second, text).json()["model"] == second
        streamed = f"{text} streamed"
        assert _streamed_models(_ask(client, first, streamed, stream=True)) == {first}
        assert _streamed_models(_ask(client, second, streamed, stream=True)) == {second}
