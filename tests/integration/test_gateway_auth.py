"""API keys declared in the config: 401 without a good key, 404 for a model the key may
not use, and /v1/models listing only what the key may use."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis
import yaml
from openai.types.chat import ChatCompletionMessageParam

from gateway.auth.authenticator import UNKNOWN_KEY_RECHECK_S
from gateway.auth.keys import KeyRecord, digest_of
from gateway.backends.redis.keys import RedisKeyStore
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

ADMIN_KEY = "sk-team-a-0123456789"
NARROW_KEY = "sk-team-b-9876543210"
OPERATOR_KEY = "sk-operator-0123456789abcdef"
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


def test_a_model_not_allowed_is_as_absent_as_one_that_does_not_exist(secured: Gateway) -> None:
    narrow = client(secured, NARROW_KEY)
    with pytest.raises(openai.NotFoundError) as caught:
        narrow.chat.completions.create(model="other-model", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError) as absent:
        narrow.chat.completions.create(model="no-such-model", messages=MESSAGES)
    error = caught.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert error["message"].replace("other-model", "X") == absent.value.response.json()["error"][
        "message"
    ].replace("no-such-model", "X")  # the same words: nothing told apart
    assert "team-b" not in error["message"]


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
    with pytest.raises(openai.NotFoundError):
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


def test_the_engine_gets_the_gateways_request_id_and_the_client_its_own(
    secured: Gateway, stub: Stub
) -> None:
    """vLLM takes X-Request-Id as its request id: two tenants choosing the same one
    would collide in the engine, so the engine gets the gateway's own."""
    seen: list[str] = []
    for _ in range(2):
        raw = client(secured, ADMIN_KEY).chat.completions.with_raw_response.create(
            model=STUB_MODEL, messages=MESSAGES, extra_headers={"x-request-id": "trace-123"}
        )
        assert raw.headers["x-request-id"] == "trace-123"
        seen.append(stub.stats()["last_request"]["headers"]["x-request-id"])
    assert all(engine_id.startswith("vgate-") for engine_id in seen)
    assert len(set(seen)) == 2


# ---------------------------------------------------------------- keys made at run time


@pytest.fixture(scope="module")
def stored_keys(
    stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path]]:
    """A gateway whose keys live in Redis, and a config file for `vgate keys`."""
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "admin_key": OPERATOR_KEY},
    }
    directory = tmp_path_factory.mktemp("stored-keys")
    path = directory / "keys.yaml"
    path.write_text(yaml.safe_dump(config))
    for gateway in start_gateway(config, directory):
        yield gateway, path


def admin(gateway: Gateway, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
    """``/admin/keys`` on the operator listener when the gateway has one."""
    base = getattr(gateway, "admin_url", None) or gateway.url
    headers = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    return httpx.request(method, f"{base}/admin/keys{path}", headers=headers, **kwargs)


def vgate_keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", "keys", *args, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def ask(gateway: Gateway, secret: str) -> int:
    body = {"model": STUB_MODEL, "messages": MESSAGES, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=headers
    ).status_code


@pytest.mark.parametrize("expires", ["99999999999d", "9999-12-31T23:59:59-12:00", "9" * 5000 + "d"])
def test_an_expiry_beyond_any_date_is_400_and_no_key_is_stored(
    stored_keys: tuple[Gateway, Path], expires: str
) -> None:
    gateway, _ = stored_keys
    name = f"far-{uuid.uuid4().hex[:8]}"
    made = admin(gateway, "POST", json={"name": name, "expires": expires})
    assert made.status_code == 400, made.text
    assert made.json()["error"]["type"] == "invalid_request_error"
    listing = admin(gateway, "GET")
    assert listing.status_code == 200
    assert name not in [row["name"] for row in listing.json()["data"]]


def test_listings_survive_a_stored_date_beyond_any_calendar(
    stored_keys: tuple[Gateway, Path], redis_url: str
) -> None:
    """A record written before expiries were bounded lists as the last date there is."""
    gateway, config = stored_keys
    name = f"ancient-{uuid.uuid4().hex[:8]}"
    record = KeyRecord(name, digest_of(f"sk-{name}"), created_at=1e20, expires_at=1e20)

    async def plant() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await RedisKeyStore(client).create(record)
        finally:
            await client.aclose()

    asyncio.run(plant())
    try:
        listing = admin(gateway, "GET")
        assert listing.status_code == 200, listing.text
        row = next(r for r in listing.json()["data"] if r["name"] == name)
        assert row["expires_at"] == "9999-12-31T23:59:59+00:00"
        listed = vgate_keys(config, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert name in [row["name"] for row in json.loads(listed.stdout)]
        assert vgate_keys(config, "list").returncode == 0
    finally:
        assert admin(gateway, "DELETE", f"/{name}").status_code == 200


def redis_lookups(redis_url: str) -> int:
    """Key-store reads Redis has served so far (GET of the version, HGET, HGETALL)."""
    stats = redis.Redis.from_url(redis_url).info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("get", "hget", "hgetall"))


def test_a_flood_of_unknown_keys_costs_no_redis_lookup_each(
    stored_keys: tuple[Gateway, Path], redis_url: str
) -> None:
    gateway, config = stored_keys

    async def flood(keys: list[str]) -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(limits=limits, timeout=10) as http:
            body = {"model": STUB_MODEL, "messages": MESSAGES}
            gate = asyncio.Semaphore(16)

            async def one(key: str) -> int:
                async with gate:
                    response = await http.post(
                        f"{gateway.base_url}/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    return response.status_code

            return await asyncio.gather(*(one(k) for k in keys))

    def lookups_per_s(during: Callable[[], object]) -> tuple[float, int, float]:
        before, started = redis_lookups(redis_url), time.monotonic()
        during()
        lookups, elapsed = redis_lookups(redis_url) - before, time.monotonic() - started
        return lookups / elapsed, lookups, elapsed

    idle, _, _ = lookups_per_s(lambda: time.sleep(1.0))  # background polls: key-refresh, ...
    random_keys = [f"sk-{uuid.uuid4().hex}" for _ in range(600)]
    repeated = ["sk-the-same-wrong-key-0123456789"] * 300
    statuses: list[int] = []
    flooded, lookups, _ = lookups_per_s(lambda: statuses.extend(asyncio.run(flood(random_keys))))
    assert set(statuses) == {401}
    # At most one check per recheck interval, whatever the flood. The session's Redis
    # also serves other gateways' polls, whose rate moves with the machine's load, so
    # the bound allows two reads per check; one read per key would be 600 reads at the
    # flood's rate (hundreds a second) ...
    assert flooded <= idle + 2 / UNKNOWN_KEY_RECHECK_S + 5, (flooded, idle)
    assert lookups < len(random_keys) / 3, lookups
    # ... and a wrong key sent again and again costs nothing once remembered.
    assert asyncio.run(flood(repeated[:1])) == [401]
    _, repeating, elapsed = lookups_per_s(lambda: asyncio.run(flood(repeated)))
    # Counted, not as a rate: a fast flood lasts a fraction of a second, in which one
    # background poll more or less moves the rate by several per second. One read per
    # request would be 300.
    assert repeating <= idle * elapsed + 4, (repeating, idle, elapsed)

    # A key made afterwards works at once, made with the admin API or the CLI.
    made = admin(gateway, "POST", json={"name": f"after-flood-{uuid.uuid4().hex[:8]}"})
    assert made.status_code == 201, made.text
    assert ask(gateway, made.json()["key"]) == 200
    cli = vgate_keys(config, "create", "--name", f"after-cli-{uuid.uuid4().hex[:8]}", "--json")
    assert cli.returncode == 0, cli.stderr
    assert ask(gateway, json.loads(cli.stdout)["key"]) == 200
