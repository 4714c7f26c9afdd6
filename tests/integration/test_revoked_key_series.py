"""A revoked key's metric series leave ``/metrics``, on every replica.

``vgate_rate_limited_requests_total{key}`` and ``vgate_tokens_charged_total{key}``
kept a series per key ever used until the gateway restarted: with keys made and
revoked all day, the series only grew. Two real gateway processes share one
redis-server here; a key used through both is revoked with ``vgate keys revoke``
(straight to Redis: the gateways learn it from their key-refresh poll) and another
with ``DELETE /admin/keys`` on one replica, and each gateway's ``/metrics`` drops
the revoked key's series, while a key that still exists keeps its own.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

RUN = uuid.uuid4().hex[:8]
ADMIN_KEY = "admin-revoked-series-0123456789"
KEEPER, KEEPER_KEY = f"keeper-{RUN}", "sk-keeper-series-0123456789"
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PER_KEY = ("vgate_rate_limited_requests_total", "vgate_tokens_charged_total")


@pytest.fixture(scope="module")
def config_file(stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [{"name": KEEPER, "key": KEEPER_KEY, "rpm": 2, "tpm": 100_000}],
        },
    }
    path = tmp_path_factory.mktemp("revoked-series") / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def replicas(config_file: Path) -> Iterator[list[Gateway]]:
    config: dict[str, Any] = yaml.safe_load(config_file.read_text())
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                contextlib.contextmanager(start_gateway)(config, config_file.parent)
            )
            for _ in range(2)
        ]


def _complete(gateway: Gateway, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{gateway.base_url}/chat/completions"
    return httpx.post(url, json=BODY, headers=headers, timeout=10).status_code


def _series_of(gateway: Gateway, name: str) -> list[str]:
    """The lines of ``/metrics`` that are a per-key series of the key ``name``."""
    label = f'key="{name}"'
    return [
        line
        for line in gateway.metrics().splitlines()
        if line.startswith(PER_KEY) and label in line
    ]


def _charge_and_refuse(replicas: list[Gateway], key: str) -> None:
    """Two requests admitted (tokens charged), then one refused on each replica (a
    429 series): the key's limit is 2 a minute, shared through Redis."""
    assert [_complete(g, key) for g in replicas] == [200, 200]
    assert [_complete(g, key) for g in replicas] == [429, 429]


def _made(config_file: Path, name: str) -> str:
    argv = [sys.executable, "-m", "gateway", "keys", "create", "--name", name, "--rpm", "2",
            "--tpm", "100000", "--json", "--config", str(config_file)]  # fmt: skip
    made = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    secret: str = yaml.safe_load(made.stdout)["key"]
    return secret


def _wait_gone(gateway: Gateway, name: str) -> None:
    """Wait until ``gateway``'s ``/metrics`` holds no series of the key ``name``."""
    holds_soon(lambda: not _series_of(gateway, name), 10, f"{name}'s series stayed")


def _assert_both_kinds(gateway: Gateway, name: str) -> None:
    lines = _series_of(gateway, name)
    assert any(line.startswith("vgate_tokens_charged_total") for line in lines), lines
    assert any(line.startswith("vgate_rate_limited_requests_total") for line in lines), lines


def test_a_key_revoked_with_the_cli_leaves_every_replicas_metrics(
    replicas: list[Gateway], config_file: Path
) -> None:
    name = f"cli-{RUN}"
    secret = _made(config_file, name)
    _charge_and_refuse(replicas, secret)
    _charge_and_refuse(replicas, KEEPER_KEY)
    for gateway in replicas:
        _assert_both_kinds(gateway, name)

    argv = [sys.executable, "-m", "gateway", "keys", "revoke", "--name", name,
            "--config", str(config_file)]  # fmt: skip
    revoked = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert revoked.returncode == 0, revoked.stderr

    for gateway in replicas:
        _wait_gone(gateway, name)
        _assert_both_kinds(gateway, KEEPER)  # a key that exists keeps its series


def test_a_key_revoked_through_one_replica_leaves_the_others_metrics(
    replicas: list[Gateway], config_file: Path
) -> None:
    name = f"admin-{RUN}"
    made = httpx.post(
        f"{replicas[0].operator_url}/admin/keys",
        json={"name": name, "rpm": 2, "tpm": 100_000},
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    _charge_and_refuse(replicas, made.json()["key"])
    for gateway in replicas:
        _assert_both_kinds(gateway, name)

    revoked = httpx.delete(f"{replicas[0].operator_url}/admin/keys/{name}", headers=ADMIN)
    assert revoked.status_code == 200, revoked.text
    for gateway in replicas:
        _wait_gone(gateway, name)
