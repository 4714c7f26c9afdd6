"""Readiness follows the rate limiter when it fails closed: a full Redis (``maxmemory``
with ``noeviction``) refuses every write with ``OOM`` and still answers ``PING``. Under
``ratelimit.on_redis_error: fail_closed`` every request then gets 503
``rate_limiter_unavailable``, so ``/ready`` answers 503 too (before: 200, and a load
balancer kept sending it traffic it refused), and 200 again once Redis takes writes,
with no request needed. Under ``local`` requests are still served and ``/ready``
stays 200, as documented."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, start_gateway, start_stub

KEY = "sk-ready-fail-closed-0123456789"
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@contextlib.contextmanager
def world(policy: str, directory: Path) -> Iterator[tuple[Gateway, redis.Redis]]:
    """A gateway on a Redis of its own (and an admin client to that Redis)."""
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stub = stack.enter_context(contextlib.contextmanager(start_stub)("--model", STUB_MODEL))
        config: dict[str, Any] = {
            "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
            "redis": {"url": redis_url, "timeout_s": 0.5, "retry_s": 0.2},
            "auth": {"enabled": True, "keys": [{"name": "r", "key": KEY, "rpm": 100_000}]},
            "ratelimit": {"on_redis_error": policy},
        }
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(config, directory))
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        yield gateway, admin


def ask(gateway: Gateway) -> int:
    headers = {"authorization": f"Bearer {KEY}"}
    reply = httpx.post(f"{gateway.base_url}/chat/completions", json=BODY, headers=headers)
    return reply.status_code


def ready(gateway: Gateway) -> int:
    """The public ``/ready``'s status."""
    return httpx.get(f"{gateway.url}/ready").status_code


def fill_up(admin: redis.Redis) -> None:
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # full: every write fails with OOM


def test_a_limiter_failing_closed_takes_the_gateway_out_of_rotation(tmp_path: Path) -> None:
    with world("fail_closed", tmp_path) as (gateway, admin):
        assert ask(gateway) == 200 and ready(gateway) == 200
        fill_up(admin)
        assert ask(gateway) == 503  # rate_limiter_unavailable
        holds_soon(lambda: ready(gateway) == 503, 5.0, "/ready stayed ready")
        detail = gateway.ready()
        assert detail["redis"] == "reachable" and detail["rate_limiter"] == "refusing", detail
        admin.config_set("maxmemory", 0)  # healed; no request is sent meanwhile
        holds_soon(lambda: ready(gateway) == 200, 5.0, "/ready did not come back")
        assert ask(gateway) == 200
        assert gateway.ready()["rate_limiter"] == "ok"


@pytest.mark.parametrize("policy", ["local", "fail_open"])
def test_a_limiter_that_still_serves_keeps_the_gateway_ready(policy: str, tmp_path: Path) -> None:
    with world(policy, tmp_path) as (gateway, admin):
        fill_up(admin)
        try:
            assert ask(gateway) == 200  # decided locally, or admitted without limits
            assert ready(gateway) == 200
            assert gateway.ready()["rate_limiter"] == "ok"
        finally:
            admin.config_set("maxmemory", 0)
