"""Records a newer vgate could write (unknown fields) and records nobody can read, planted
straight into Redis: a running gateway keeps refreshing (a key revoked after them is
refused within a second), a new gateway starts, and both report the skipped records
and every background task in /metrics and /ready.

A private redis-server: the session's one holds other tests' keys and engines, which
must not meet these records."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from engines.registry import REDIS_KEY as ENGINES_KEY
from engines.registry import EngineRecord
from gateway.auth.keys import digest_of, new_key
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

ADMIN_KEY = "admin-key-0123456789abcdef"
TASKS = {
    "registry-watch",
    "key-refresh",
    "lease-renewal",
    "health-probe",
    "load-scrape",
    "model-info",
}
REGISTRY_MODEL = "registry-model"
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    with run_redis() as url:
        yield url


@pytest.fixture(scope="module")
def config_file(stub: Stub, private_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": private_redis},
        "auth": {"enabled": True, "admin_key": ADMIN_KEY},
        "upstream": {"health_interval_s": 0.5, "metrics_interval_s": 0.5},
    }
    path = tmp_path_factory.mktemp("resilience") / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config_file: Path) -> contextlib.AbstractContextManager[Gateway]:
    config = yaml.safe_load(config_file.read_text())
    return contextlib.contextmanager(start_gateway)(config, config_file.parent)


@pytest.fixture(scope="module")
def running(config_file: Path) -> Iterator[Gateway]:
    """A gateway that is up before the records are planted."""
    with start(config_file) as gateway:
        yield gateway


class Planted:
    """What was written into Redis: a key made the normal way, a key record and an engine
    record carrying fields this version does not know, and one undecodable of each."""

    def __init__(self, before_name: str, before_secret: str, newer_secret: str) -> None:
        self.before_name = before_name
        self.before_secret = before_secret
        self.newer_secret = newer_secret


@pytest.fixture(scope="module")
def planted(running: Gateway, private_redis: str, stub: Stub) -> Planted:
    made = httpx.post(
        f"{running.operator_url}/admin/keys", json={"name": "before"},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    before_secret = made.json()["key"]
    assert complete(running, before_secret).status_code == 200

    newer_secret, newer = new_key("newer")
    newer_json = asdict(newer) | {"scopes": ["chat"], "org": {"id": 7}}
    newer_json["limits"] = {"rpm": 1000, "rpd": 50_000}  # a limit kind this version lacks
    engine = EngineRecord(
        "newer-engine", REGISTRY_MODEL, stub.url, "ready", time.time(), "elsewhere", 0,
        time.time() + 3600,
    )  # fmt: skip
    client = redis.Redis.from_url(private_redis)
    try:
        client.hset("vgate:keys", mapping={
            newer.digest: orjson.dumps(newer_json),
            digest_of("sk-unreadable"): b'{"name": "unreadable", "digest": 42}',
        })  # fmt: skip
        client.hset("vgate:keys:names", mapping={"newer": newer.digest})
        client.incr("vgate:keys:version")
        client.hset(ENGINES_KEY, mapping={
            "newer-engine": orjson.dumps(asdict(engine) | {"gpu": "H200", "drain_s": 30}),
            "unreadable-engine": b"{truncated",
        })  # fmt: skip
    finally:
        client.close()
    return Planted("before", before_secret, newer_secret)


def complete(gateway: Gateway, secret: str) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/chat/completions", json=BODY,
                      headers={"Authorization": f"Bearer {secret}"}, timeout=10)  # fmt: skip


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - started


def listed_models(gateway: Gateway, secret: str) -> set[str]:
    response = httpx.get(
        f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {secret}"}
    )
    return {m["id"] for m in response.json()["data"]}


def samples(gateway: Gateway, name: str) -> dict[str, float]:
    """``name``'s samples in /metrics by their one label's value."""
    found: dict[str, float] = {}
    for line in gateway.metrics().splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


def background(gateway: Gateway) -> dict[str, Any]:
    detail: dict[str, Any] = gateway.ready()["background"]
    return detail


def revoke(config_file: Path, name: str) -> None:
    """``vgate keys revoke``: another process, so the gateway learns of it only by
    refreshing its keys."""
    argv = [sys.executable, "-m", "gateway", "keys", "revoke", "--name", name,
            "--config", str(config_file)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_a_running_gateway_keeps_refreshing_past_them(
    running: Gateway, planted: Planted, config_file: Path
) -> None:
    wait_until(lambda: REGISTRY_MODEL in listed_models(running, planted.newer_secret))
    assert complete(running, planted.newer_secret).status_code == 200
    wait_until(lambda: samples(running, "vgate_records_skipped_total").get("engine", 0) > 0)
    wait_until(lambda: samples(running, "vgate_records_skipped_total").get("key", 0) > 0)

    revoke(config_file, planted.before_name)
    refused_after = wait_until(lambda: complete(running, planted.before_secret).status_code == 401)
    assert refused_after <= 1.0, refused_after
    assert complete(running, planted.newer_secret).status_code == 200

    errors = samples(running, "vgate_background_errors_total")
    assert set(errors) == TASKS and not any(errors.values()), errors
    # lease-renewal first runs a third of a lease (20 s) after start: no age before that.
    ages = samples(running, "vgate_background_last_success_age_seconds")
    assert TASKS - {"lease-renewal"} <= set(ages) and max(ages.values()) < 5, ages
    detail = background(running)
    assert set(detail) == TASKS and all(t["failures"] == 0 for t in detail.values()), detail
    assert all(t["last_success_age_s"] < 5 for n, t in detail.items() if n != "lease-renewal")


def test_a_new_gateway_starts_with_them_present(
    planted: Planted, config_file: Path, running: Gateway
) -> None:
    # `running` keeps the order: this gateway starts after the revocation above.
    with start(config_file) as fresh:
        assert complete(fresh, planted.newer_secret).status_code == 200
        assert complete(fresh, planted.before_secret).status_code == 401
        wait_until(lambda: REGISTRY_MODEL in listed_models(fresh, planted.newer_secret))
        skipped = samples(fresh, "vgate_records_skipped_total")
        assert skipped["key"] > 0 and skipped["engine"] > 0, skipped
        detail = background(fresh)
        assert detail["key-refresh"]["last_success_age_s"] is not None
        assert detail["registry-watch"]["last_success_age_s"] is not None
