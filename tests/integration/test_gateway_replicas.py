"""Three gateway processes sharing one redis-server: one rate limit for all of them,
keys made with `vgate keys` or /admin/keys usable everywhere, revoked everywhere
within a second, and expiring on time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

RUN = uuid.uuid4().hex[:8]
LIMIT = 300
HAMMER_NAME, HAMMER_KEY = f"hammer-{RUN}", "sk-hammer-0123456789"
ADMIN_KEY = "admin-key-0123456789abcdef"
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def config_file(stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [{"name": HAMMER_NAME, "key": HAMMER_KEY, "rpm": LIMIT}],
        },
    }
    path = tmp_path_factory.mktemp("replicas") / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def replicas(config_file: Path) -> Iterator[list[Gateway]]:
    config = yaml.safe_load(config_file.read_text())
    with contextlib.ExitStack() as stack:
        gateways = [
            stack.enter_context(
                contextlib.contextmanager(start_gateway)(config, config_file.parent)
            )
            for _ in range(3)
        ]
        yield gateways


def vgate_keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway", "keys", *args, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def complete(gateway: Gateway, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions", json=BODY,
        headers={"Authorization": f"Bearer {key}"}, timeout=10,
    )  # fmt: skip


def test_one_limit_holds_across_three_replicas(replicas: list[Gateway]) -> None:
    statuses = asyncio.run(_hammer([g.base_url for g in replicas], HAMMER_KEY, 2 * LIMIT + 100))
    assert set(statuses) <= {200, 429}, statuses
    assert LIMIT * 0.99 <= statuses[200] <= LIMIT + 1, statuses
    assert statuses[429] == 2 * LIMIT + 100 - statuses[200]


async def _hammer(base_urls: list[str], key: str, total: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = iter(range(total))
    headers = {"Authorization": f"Bearer {key}"}

    async def worker(client: httpx.AsyncClient) -> None:
        for index in queue:
            url = base_urls[index % len(base_urls)] + "/chat/completions"
            statuses[(await client.post(url, json=BODY, headers=headers)).status_code] += 1

    limits = httpx.Limits(max_connections=48)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(48)))
    return statuses


def test_cli_key_works_on_every_replica_and_revocation_reaches_all_within_a_second(
    replicas: list[Gateway], config_file: Path
) -> None:
    name = f"cli-{RUN}"
    made = vgate_keys(config_file, "create", "--name", name, "--rpm", "1000", "--json")
    assert made.returncode == 0, made.stderr
    secret = json.loads(made.stdout)["key"]
    assert secret.startswith("sk-vg-")
    assert all(complete(g, secret).status_code == 200 for g in replicas)

    listed = vgate_keys(config_file, "list", "--json")
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows[name]["rpm"] == 1000 and rows[name]["source"] == "redis"
    assert secret not in listed.stdout and rows[HAMMER_NAME]["source"] == "config"

    revoked = vgate_keys(config_file, "revoke", "--name", name, "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"name": name, "revoked": True}
    started = time.monotonic()
    refused_after = [_seconds_until_refused(g, secret) for g in replicas]
    assert max(refused_after) <= 1.0, refused_after
    assert time.monotonic() - started <= 1.5


def test_admin_api_makes_and_revokes_keys_for_every_replica(replicas: list[Gateway]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    name = f"admin-{RUN}"
    made = httpx.post(
        f"{replicas[0].operator_url}/admin/keys", json={"name": name, "models": [STUB_MODEL]},
        headers=admin,
    )  # fmt: skip
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    assert all(complete(g, secret).status_code == 200 for g in replicas)
    listing = httpx.get(f"{replicas[1].operator_url}/admin/keys", headers=admin).json()
    assert name in [row["name"] for row in listing["data"]]
    assert secret not in json.dumps(listing)
    again = httpx.post(f"{replicas[2].operator_url}/admin/keys", json={"name": name}, headers=admin)
    assert again.status_code == 400 and "exists" in again.json()["error"]["message"]
    revoked = httpx.delete(f"{replicas[2].operator_url}/admin/keys/{name}", headers=admin)
    assert revoked.status_code == 200
    assert max(_seconds_until_refused(g, secret) for g in replicas) <= 1.0


def test_admin_api_needs_the_admin_key(replicas: list[Gateway]) -> None:
    for headers in ({}, {"Authorization": f"Bearer {HAMMER_KEY}"}):
        response = httpx.get(f"{replicas[0].operator_url}/admin/keys", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_keys_expire_on_every_replica(replicas: list[Gateway], config_file: Path) -> None:
    made = vgate_keys(config_file, "create", "--name", f"brief-{RUN}", "--expires", "3s", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    secret = created["key"]
    assert all(complete(g, secret).status_code == 200 for g in replicas)
    # expires_at is shown to the second; the key expired within the second after it.
    time.sleep(max(0.0, _timestamp(created["expires_at"]) + 1.0 - time.time()))
    for gateway in replicas:
        response = complete(gateway, secret)
        assert response.status_code == 401
        assert "expired" in response.json()["error"]["message"]


def test_keys_cli_reports_clear_errors(config_file: Path) -> None:
    taken = vgate_keys(config_file, "create", "--name", HAMMER_NAME)
    assert taken.returncode == 2 and "exists already" in taken.stderr
    bad = vgate_keys(config_file, "create", "--name", "x", "--expires", "soon")
    assert bad.returncode == 2 and "invalid expiry" in bad.stderr
    missing = vgate_keys(config_file, "revoke", "--name", f"nobody-{RUN}")
    assert missing.returncode == 1 and "no key named" in missing.stderr


def _seconds_until_refused(gateway: Gateway, secret: str, limit_s: float = 3.0) -> float:
    started = time.monotonic()
    while complete(gateway, secret).status_code != 401:
        if time.monotonic() - started > limit_s:
            return limit_s
        time.sleep(0.02)
    return time.monotonic() - started


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
