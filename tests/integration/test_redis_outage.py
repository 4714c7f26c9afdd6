"""Redis dies under traffic: `fail_open` keeps serving without limits, `fail_closed`
answers 503 with Retry-After; neither ever answers 500; both recover with no restart
once Redis is back."""

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
LIMIT = 5
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}]}


def gateway_for(policy: str, redis_port: int, stub: Stub, directory: Path) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "retry_s": 0.2},
        "auth": {"enabled": True, "keys": [{"name": policy, "key": KEY, "rpm": LIMIT}]},
        "ratelimit": {"on_redis_error": policy},
    }
    yield from start_gateway(config, directory)


def post(gateway: Gateway) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
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
            response = post(gateway)
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
        response = post(gateway)
        if "x-ratelimit-limit-requests" in response.headers:  # counted in Redis again
            return [response.status_code] + [post(gateway).status_code for _ in range(LIMIT)]
        assert time.monotonic() < deadline, "the gateway did not use Redis again"
        time.sleep(0.1)
