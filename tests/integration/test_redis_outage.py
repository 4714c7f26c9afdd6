"""Redis dies under traffic: `local` (the default) enforces each replica's share of the
limits in memory, `fail_open` keeps serving without limits, `fail_closed` answers 503
with Retry-After; none ever answers 500; all recover with no restart once Redis is
back."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

KEY = "sk-outage-0123456789"
PROBE = "sk-outage-probe-0123456789"
LIMIT = 5
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}]}


def gateway_for(
    policy: str,
    redis_port: int,
    stub: Stub,
    directory: Path,
    keys: list[dict[str, object]] | None = None,
    replicas: int = 1,
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "retry_s": 0.2},
        "auth": {"enabled": True, "keys": keys or default_keys(policy)},
        "ratelimit": {"on_redis_error": policy, "replicas_hint": replicas},
    }
    yield from start_gateway(config, directory)


def default_keys(policy: str) -> list[dict[str, object]]:
    """The key the traffic uses, and one only the checks use. A key refused for its
    request rate is refused again by each gateway, without asking the limiter, until
    its window reopens (DenialMemo): the checks during and after the outage need a
    key the limiter has not refused."""
    return [
        {"name": policy, "key": KEY, "rpm": LIMIT},
        {"name": f"{policy}-probe", "key": PROBE, "rpm": LIMIT},
    ]


def post(gateway: Gateway, key: str = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=BODY, headers=headers)


class Traffic:
    """A steady stream of requests in a thread, counting statuses."""

    def __init__(self, gateway: Gateway) -> None:
        self.statuses: Counter[int] = Counter()
        self._gateway = gateway
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses[post(self._gateway).status_code] += 1
            time.sleep(0.01)


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
def test_redis_outage_applies_the_policy_and_recovers(
    policy: str, stub: Stub, tmp_path: Path
) -> None:
    port = free_port()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(port))
        gateway = stack.enter_context(
            contextlib.contextmanager(gateway_for)(policy, port, stub, tmp_path)
        )
        assert [post(gateway).status_code for _ in range(LIMIT + 2)] == [200] * LIMIT + [429] * 2
        with Traffic(gateway) as traffic:
            time.sleep(0.3)
            _kill(redis_url)
            time.sleep(1.5)
            during = sum(traffic.statuses.values())
            response = post(gateway, PROBE)
            time.sleep(0.3)
        assert 500 not in traffic.statuses, traffic.statuses
        assert sum(traffic.statuses.values()) > during  # answered all along the outage
        if policy == "fail_open":
            assert response.status_code == 200  # no limits while Redis is away
            assert "x-ratelimit-limit-requests" not in response.headers
        else:
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "rate_limiter_unavailable"
            assert response.headers["retry-after"] == "1"
        with run_redis(port):
            statuses = _after_recovery(gateway)
        assert statuses == [200] * LIMIT + [429]
        assert 'vgate_redis_errors_total{component="ratelimit"}' in gateway.metrics()


def test_local_shares_the_limit_among_replicas_until_redis_is_back(
    stub: Stub, tmp_path: Path
) -> None:
    """Three replicas with ``replicas_hint: 3`` and Redis gone: each admits a third of
    the key's rpm (rounded down), so together they admit no more than the limit; with
    Redis back, Redis decides again (its limit, not a third, in the headers)."""
    limit = 31
    port = free_port()
    keys: list[dict[str, object]] = [
        {"name": "local", "key": KEY, "rpm": limit},
        {"name": "probe", "key": PROBE, "rpm": limit},
    ]
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(port))
        gateways = [
            stack.enter_context(
                contextlib.contextmanager(gateway_for)("local", port, stub, tmp_path, keys, 3)
            )
            for _ in range(3)
        ]
        assert [limit_of(post(g)) for g in gateways] == [str(limit)] * 3  # counted in Redis
        _kill(redis_url)
        statuses: Counter[int] = Counter()
        for index in range(4 * limit):
            response = post(gateways[index % 3])
            statuses[response.status_code] += 1
            assert limit_of(response) == str(limit // 3)  # this replica's share
        assert set(statuses) == {200, 429}, statuses
        assert statuses[200] == 3 * (limit // 3) <= limit, statuses
        assert 'vgate_redis_errors_total{component="ratelimit"}' in gateways[0].metrics()
        with run_redis(port):
            for gateway in gateways:
                deadline = time.monotonic() + 5
                while limit_of(post(gateway, PROBE)) != str(limit):
                    assert time.monotonic() < deadline, "the gateway did not use Redis again"
                    time.sleep(0.1)


def limit_of(response: httpx.Response) -> str | None:
    limit: str | None = response.headers.get("x-ratelimit-limit-requests")
    return limit


def _kill(redis_url: str) -> None:
    """kill -9 the redis-server behind ``redis_url``."""
    client = redis.Redis.from_url(redis_url)
    pid = int(client.info("server")["process_id"])
    client.close()
    os.kill(pid, signal.SIGKILL)


def _after_recovery(gateway: Gateway, within_s: float = 5.0) -> list[int]:
    """Statuses of LIMIT + 1 requests once the fresh (empty) Redis counts again."""
    deadline = time.monotonic() + within_s
    while True:
        response = post(gateway, PROBE)
        if "x-ratelimit-limit-requests" in response.headers:  # counted in Redis again
            return [response.status_code] + [post(gateway, PROBE).status_code for _ in range(LIMIT)]
        assert time.monotonic() < deadline, "the gateway did not use Redis again"
        time.sleep(0.1)
