"""Security audit: a gateway that starts open to whoever reaches it says so.

Before, ``server.host: 0.0.0.0`` with auth off (its default) started without a word:
every model, unlimited, for anyone on the network. Now that, and a Redis away from this
machine without a password, is a warning at start-up (:mod:`gateway.cli.exposure`).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cli.exposure import exposure_warnings, is_loopback
from gateway.config.settings import Settings


def _settings(**sections: Any) -> Settings:
    return Settings(models=[{"name": "m", "endpoints": ["http://127.0.0.1:9"]}], **sections)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gateway.example.com"])
def test_auth_off_beyond_loopback_is_a_warning(host: str) -> None:
    (warning,) = exposure_warnings(_settings(server={"host": host}))
    assert "auth is off" in warning and host in warning and "auth.enabled: true" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_or_auth_on_is_quiet(host: str) -> None:
    assert is_loopback(host)
    assert exposure_warnings(_settings(server={"host": host})) == []
    auth = {"enabled": True, "keys": [{"name": "a", "key": "k" * 20}]}
    assert exposure_warnings(_settings(server={"host": "0.0.0.0"}, auth=auth)) == []


def test_a_redis_away_from_here_without_a_password_is_a_warning() -> None:
    settings = _settings(
        redis={"url": "redis://redis.internal:6380/0"},
        cache={"redis_url": "redis://10.0.0.8/1"},
    )
    first, second = exposure_warnings(settings)
    assert first.startswith("redis.url") and "redis.internal:6380" in first
    assert second.startswith("cache.redis_url") and "10.0.0.8:6379" in second


@pytest.mark.parametrize(
    "url",
    [
        "redis://gateway:s3cret@redis:6379/0",
        "redis://:s3cret@redis:6379/0",
        "rediss://redis:6379/0?password=s3cret",
        "redis://127.0.0.1:6379/0",
        "unix:///run/redis.sock",
    ],
)
def test_a_redis_with_a_password_or_on_this_machine_is_quiet(url: str) -> None:
    assert exposure_warnings(_settings(redis={"url": url})) == []
    open_gateway = _settings(server={"host": "0.0.0.0"}, redis={"url": url})
    assert all("s3cret" not in warning for warning in exposure_warnings(open_gateway))


@pytest.mark.parametrize("admin_host", ["0.0.0.0", "10.0.0.5"])
def test_an_operator_listener_beyond_loopback_without_a_token_is_a_warning(
    admin_host: str,
) -> None:
    server = {"admin_host": admin_host, "admin_port": 9100}
    (warning,) = exposure_warnings(_settings(server=server))
    assert f"{admin_host}:9100" in warning and "server.operator_token" in warning
    token = "operator-token-0123456789abcdef"
    quiet = _settings(server={**server, "operator_token": token})
    assert exposure_warnings(quiet) == []
    assert exposure_warnings(_settings(server={"admin_port": 9100})) == []  # loopback
