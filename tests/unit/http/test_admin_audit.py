"""The admin key's routes, in process: every refusal of a wrong admin key counted, every
change logged, and a config key's name answered as such (bug hunt: a guessed admin key
left no trace in metrics, a key made or revoked and a rollout's weights changed none in
the log, and ``DELETE /admin/keys/<config key>`` said there was no such key)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.config.settings import Settings
from tests.helpers.metrics_text import metric_sum

ADMIN_KEY = "sk-admin-audit-0123456789"
CONFIG_KEY = "sk-config-audit-0123456789"
ENGINE = "http://127.0.0.1:9"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        models=[
            {"name": "stable", "endpoints": [ENGINE]},
            {"name": "canary", "endpoints": [ENGINE]},
        ],
        rollouts=[
            {
                "model": "roll",
                "variants": [
                    {"model": "stable", "weight": 90},
                    {"model": "canary", "weight": 10, "canary": True},
                ],
            }
        ],
        auth={
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [{"name": "cfg", "key": CONFIG_KEY}],
        },
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


async def _failures(client: httpx.AsyncClient) -> float:
    metrics = await client.get("/metrics", headers=_admin())
    return metric_sum(metrics.text, "vgate_auth_failures_total", reason="invalid_admin_key")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("DELETE", "/admin/keys/cfg"),
        ("GET", "/admin/rollouts"),
        ("POST", "/admin/rollouts/roll/promote"),
        ("GET", "/metrics"),
        ("GET", "/status"),
    ],
)
async def test_a_wrong_admin_key_is_refused_and_counted(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    before = await _failures(client)
    for authorization in (f"Bearer {CONFIG_KEY}", "Bearer sk-guess", None):
        headers = {} if authorization is None else {"authorization": authorization}
        refused = await client.request(method, path, headers=headers, json={"name": "x"})
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_api_key"
    assert await _failures(client) == before + 3
    ready = await client.get("/ready", headers={"authorization": "Bearer sk-guess"})
    assert ready.json() == {"status": "ready"} or ready.status_code == 503
    assert await _failures(client) == before + 3  # the public /ready asks everyone


async def test_changes_are_logged_without_the_secret(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "vgate.admin"):
        made = await client.post("/admin/keys", headers=_admin(), json={"name": "t1", "rpm": 5})
        assert made.status_code == 201, made.text
        revoked = await client.delete("/admin/keys/t1", headers=_admin())
        assert revoked.status_code == 200, revoked.text
        promoted = await client.post("/admin/rollouts/roll/promote", headers=_admin())
        assert promoted.status_code == 200, promoted.text
        rolled = await client.post("/admin/rollouts/roll/rollback", headers=_admin())
        assert rolled.status_code == 200, rolled.text
        listed = await client.get("/admin/keys", headers=_admin())  # reads are not changes
        assert listed.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "vgate.admin"]
    assert len(lines) == 4, lines
    created, gone, up, down = lines
    assert "key 't1' created" in created and '"rpm":5' in created
    assert "key 't1' revoked" in gone
    assert "rollout 'roll': canary promoted" in up and "'canary': 25.0" in up
    assert "rollout 'roll': rolled back" in down and "'canary': 0.0" in down
    assert all(line.endswith("(from 10.1.2.3:4567)") for line in lines)
    secret = made.json()["key"]
    assert not any(secret in line or ADMIN_KEY in line for line in lines)


async def test_revoking_a_config_key_says_where_it_is_declared(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.delete("/admin/keys/cfg", headers=_admin())
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "key_in_config"
    assert "auth.keys" in error["message"]
    missing = await client.delete("/admin/keys/nobody", headers=_admin())
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "key_not_found"


async def test_a_long_unknown_name_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    """No key's name is over 64 characters: a 10 KB one was echoed whole in the 404."""
    missing = await client.delete("/admin/keys/" + "n" * 10_000, headers=_admin())
    assert missing.status_code == 404
    message = missing.json()["error"]["message"]
    assert len(message) < 100 and "n" * 64 + "…" in message


@pytest.mark.parametrize(
    "body",
    [{"name": "k", "n" * 10_000: 1}, {"name": "k", "variants": {"n" * 10_000: 5}}],
    ids=["an unknown field", "a variant's rollout"],
)
async def test_a_long_field_name_is_not_echoed_whole(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    """A field's name is where a refusal says the problem is: a 10 KB unknown field (or
    key of ``variants``) was echoed whole in the 400, as the rollouts' routes never do."""
    refused = await client.post("/admin/keys", json=body, headers=_admin())
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert len(message) < 200 and "n" * 64 + "…" in message, message[:300]
