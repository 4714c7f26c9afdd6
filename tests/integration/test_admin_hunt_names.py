"""Key names against a real gateway, redis-server and stub engine: a name is who a
caller is (per-key cache, stored responses, counters), so one name never stands for
two secrets. A stored key made before a config key of its name was added to
``auth.keys`` used to keep working as that config key's tenant: it read the config
key's cached answers (bug hunt). Now the config key keeps the name and the stored
one is refused, and the admin API says a config key is revoked in the config."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.auth.keys import new_key
from gateway.backends.redis.keys import RedisKeyStore
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

ADMIN_KEY = "sk-admin-names-0123456789"
CONFIG_KEY = "sk-config-names-0123456789"
NAME = "shared-name"


async def _store_key(redis_url: str, name: str) -> str:
    client = aioredis.Redis.from_url(redis_url)
    try:
        secret, record = new_key(name)
        await RedisKeyStore(client, prefix="vgate:keys").create(record)
        return secret
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def world(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    with run_redis() as redis_url:
        # Made while no config key had the name; the config key comes later.
        stored_secret = asyncio.run(_store_key(redis_url, NAME))
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
            "redis": {"url": redis_url},
            "cache": {"enabled": True},
            "auth": {
                "enabled": True,
                "admin_key": ADMIN_KEY,
                "keys": [{"name": NAME, "key": CONFIG_KEY}],
            },
        }
        for gateway in start_gateway(config, tmp_path_factory.mktemp("admin-names")):
            yield gateway, stored_secret


def _ask(gateway: Gateway, secret: str, text: str) -> httpx.Response:
    body = {"model": STUB_MODEL, "temperature": 0, "messages": [{"role": "user", "content": text}]}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )


def test_a_stored_key_named_like_a_config_key_reads_nothing_of_it(
    world: tuple[Gateway, str],
) -> None:
    gateway, stored_secret = world
    text = f"private to the config key {uuid.uuid4().hex}"
    first = _ask(gateway, CONFIG_KEY, text)
    assert first.status_code == 200, first.text
    assert _ask(gateway, CONFIG_KEY, text).headers.get("x-cache") == "HIT"
    refused = _ask(gateway, stored_secret, text)  # was 200, X-Cache: HIT
    assert refused.status_code == 401, refused.headers
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert first.json()["choices"][0]["message"]["content"] not in refused.text


def test_the_admin_api_says_a_config_key_is_revoked_in_the_config(
    world: tuple[Gateway, str],
) -> None:
    gateway, _ = world
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = f"{gateway.operator_url}/admin/keys/{NAME}"
    listed = httpx.get(f"{gateway.operator_url}/admin/keys", headers=headers).json()["data"]
    assert [key["name"] for key in listed] == [NAME]  # the shadowed stored key
    cleaned = httpx.delete(url, headers=headers)  # it can still be removed
    assert cleaned.status_code == 200, cleaned.text
    refused = httpx.delete(url, headers=headers)  # what is left is the config's
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "key_in_config"
    assert _ask(gateway, CONFIG_KEY, "still works").status_code == 200
    made = httpx.post(f"{gateway.operator_url}/admin/keys", headers=headers, json={"name": NAME})
    assert made.status_code == 400, made.text  # a config key's name is taken
