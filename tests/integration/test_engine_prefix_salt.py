"""Keys never share the engines' prefix cache (``cache.engine_prefix_scope``): two
gateway replicas on one Redis and one stub engine. Every body forwarded for a key
reaches the engine with vLLM's ``cache_salt``, the same for a key on either replica
(a config key and a key of the store alike), another for every other key; a client's
own salt never replaces it; a rollout's variant and its shadow copy get the key's
salt too; the response cache still shares answers between keys
(``cache.scope: shared``); with ``shared`` the engine gets the client's body as sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.auth.keys import KeyRecord, digest_of
from gateway.backends.redis.keys import RedisKeyStore
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

KEYS = {"alpha": "sk-salt-alpha-0123456789", "beta": "sk-salt-beta-01234567890"}
STORED = ("gamma", "sk-salt-gamma-0123456789")
ROLLOUT, SHADOW = "salt-rollout", "salt-shadow"
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def shadow() -> Iterator[Stub]:
    yield from start_stub("--model", SHADOW)


def _config(engine: Stub, shadow: Stub, redis_url: str, scope: str) -> dict[str, Any]:
    copied = {"model": SHADOW, "share": 1.0, "max_concurrent": 4}
    return {
        "models": [
            {"name": STUB_MODEL, "endpoints": [engine.url]},
            {"name": SHADOW, "endpoints": [shadow.url]},
        ],
        "rollouts": [
            {"model": ROLLOUT, "variants": [{"model": STUB_MODEL, "weight": 1}], "shadow": copied}
        ],
        "auth": {
            "enabled": True,
            "keys": [{"name": name, "key": key} for name, key in KEYS.items()],
        },
        "redis": {"url": redis_url},
        "cache": {"enabled": True, "scope": "shared", "engine_prefix_scope": scope},
    }


def _plant_stored_key(redis_url: str) -> None:
    name, secret = STORED
    record = KeyRecord(name, digest_of(secret), created_at=1e9, expires_at=None)

    async def plant() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await RedisKeyStore(client).create(record)
        finally:
            await client.aclose()

    asyncio.run(plant())


@pytest.fixture(scope="module")
def replicas(
    engine: Stub, shadow: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    _plant_stored_key(redis_url)
    directory = tmp_path_factory.mktemp("salt")
    first = start_gateway(_config(engine, shadow, redis_url, "per_key"), directory)
    second = start_gateway(_config(engine, shadow, redis_url, "per_key"), Path(directory))
    yield next(first), next(second)
    for running in (second, first):
        running.close()


@pytest.fixture(scope="module")
def unsalted(
    engine: Stub, shadow: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = _config(engine, shadow, redis_url, "shared")
    yield from start_gateway(config, tmp_path_factory.mktemp("shared"))


def _secret(name: str) -> str:
    return KEYS.get(name) or STORED[1]


def send(gateway: Gateway, name: str, body: dict[str, Any], path: str = PATHS["chat"]) -> Any:
    """What the engine received for ``body``, sent with ``name``'s key."""
    reply = httpx.post(
        gateway.url + path,
        json={"model": STUB_MODEL} | body,
        headers={"Authorization": f"Bearer {_secret(name)}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply


def received(engine: Stub) -> dict[str, Any]:
    body: dict[str, Any] = engine.stats()["last_request"]["body"]
    return body


CHAT = {"messages": [{"role": "system", "content": "shared secret prompt"}], "temperature": 1.0}
TEXT = {"prompt": "shared secret prompt", "temperature": 1.0}


@pytest.mark.parametrize("kind", ["chat", "completions", "chat_stream"])
def test_each_key_reaches_the_engine_with_its_own_salt(
    replicas: tuple[Gateway, Gateway], engine: Stub, kind: str
) -> None:
    body = TEXT if kind == "completions" else CHAT
    path = PATHS["completions" if kind == "completions" else "chat"]
    if kind == "chat_stream":
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    salts: dict[str, set[str]] = {}
    for name in ("alpha", "beta", "gamma"):
        for gateway in (*replicas, replicas[0]):  # twice on one replica, once on the other
            send(gateway, name, body, path)
            seen = received(engine)
            assert seen["messages" if "messages" in body else "prompt"] == body.get(
                "messages", body.get("prompt")
            )
            salts.setdefault(name, set()).add(seen["cache_salt"])
    assert all(len(each) == 1 for each in salts.values()), salts
    assert len({next(iter(each)) for each in salts.values()}) == 3


def test_a_clients_salt_never_replaces_its_keys(
    replicas: tuple[Gateway, Gateway], engine: Stub
) -> None:
    send(replicas[0], "beta", CHAT)
    betas = received(engine)["cache_salt"]
    send(replicas[0], "alpha", CHAT)
    alphas = received(engine)["cache_salt"]
    sent = []
    for gateway in replicas:  # alpha sends beta's salt: it stays in alpha's own cache
        send(gateway, "alpha", {**CHAT, "cache_salt": betas})
        sent.append(received(engine)["cache_salt"])
    assert sent[0] == sent[1] and sent[0].startswith(alphas + ":")
    assert betas not in sent[0]
    send(replicas[1], "alpha", {**CHAT, "cache_salt": "another"})
    assert received(engine)["cache_salt"] not in {sent[0], alphas, betas}


def test_responses_and_pooling_carry_the_salt(
    replicas: tuple[Gateway, Gateway], engine: Stub
) -> None:
    send(replicas[0], "alpha", CHAT)
    alphas = received(engine)["cache_salt"]
    send(replicas[1], "alpha", {"input": "shared secret prompt", "store": False}, "/v1/responses")
    assert received(engine)["cache_salt"] == alphas
    send(replicas[0], "alpha", {"input": "shared secret prompt"}, "/pooling")
    assert received(engine)["cache_salt"] == alphas
    send(replicas[0], "alpha", {"prompt": "shared secret prompt"}, "/tokenize")
    assert "cache_salt" not in received(engine)  # tokenizing holds no prompt blocks


def test_a_variant_and_its_shadow_copy_carry_the_keys_salt(
    replicas: tuple[Gateway, Gateway], engine: Stub, shadow: Stub
) -> None:
    send(replicas[0], "beta", CHAT)
    betas = received(engine)["cache_salt"]
    copies = shadow.stats()["requests"]
    send(replicas[1], "beta", {**CHAT, "model": ROLLOUT})
    assert received(engine)["cache_salt"] == betas
    assert received(engine)["model"] == STUB_MODEL
    holds_soon(lambda: shadow.stats()["requests"] > copies, message="the shadow copy")
    assert received(shadow)["cache_salt"] == betas
    assert received(shadow)["model"] == SHADOW
    # streamed, the variant's body is re-encoded to ask for usage: the salt stays
    send(replicas[0], "beta", {**CHAT, "model": ROLLOUT, "stream": True})
    assert received(engine)["stream_options"] == {"include_usage": True}
    assert received(engine)["cache_salt"] == betas


def test_the_response_cache_still_shares_answers_between_keys(
    replicas: tuple[Gateway, Gateway], engine: Stub
) -> None:
    body = {"messages": [{"role": "user", "content": "cached across keys"}], "temperature": 0}
    first = send(replicas[0], "alpha", body).json()
    before = engine.stats()["requests"]
    again = send(replicas[0], "beta", body).json()  # a hit: the salt is no part of its key
    assert engine.stats()["requests"] == before
    assert again["choices"] == first["choices"]


def test_shared_forwards_the_clients_body_as_it_was(unsalted: Gateway, engine: Stub) -> None:
    send(unsalted, "alpha", CHAT)
    assert received(engine) == {"model": STUB_MODEL, **CHAT}
    send(unsalted, "beta", {**CHAT, "cache_salt": "mine"})
    assert received(engine) == {"model": STUB_MODEL, **CHAT, "cache_salt": "mine"}
