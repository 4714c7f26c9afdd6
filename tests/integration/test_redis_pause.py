"""Acceptance 2 of #14: Redis paused (SIGSTOP) for 4 s under traffic through a gateway
with auth, Redis rate limits and the Redis cache on.

A paused Redis is worse than a dead one: connections open and commands are
accepted, but nothing ever answers. Every Redis call has a deadline
(``redis.timeout_s``), so no request waits longer than that plus its own time;
the failure policy (``local``, the default) decides meanwhile, in this process's
memory, so limits still hold; after SIGCONT the gateway uses Redis again with no
restart.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

TIMEOUT_S = 0.5
"""``redis.timeout_s`` of the gateway under test."""
BUDGET_S = 1.5
"""A request's own time besides Redis (auth, the stub's answer, the cache), generous
for a loaded 2-core machine: the bound is for correctness (no request waits on the
paused Redis), not performance. Without deadlines, requests made early in the pause
wait for all of it (4 s), far past the bound."""
PAUSE_S = 4.0
TRAFFIC = "sk-pause-traffic-0123456789"
PROBE = "sk-pause-probe-0123456789"
RPM = 100_000  # the traffic key is never refused: its header tells who decided
PROBE_RPM = 4
REPLICAS = 2  # ratelimit.replicas_hint: locally each limit is halved


@dataclass(frozen=True, slots=True)
class Outcome:
    began: float
    took: float
    status: int
    limit: str | None  # x-ratelimit-limit-requests: RPM from Redis, RPM // REPLICAS locally


def post(client: httpx.Client, gateway: Gateway, key: str, content: str) -> Outcome:
    body = {
        "model": STUB_MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,  # cacheable
    }
    began = time.monotonic()
    response = client.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )
    took = time.monotonic() - began
    limit = response.headers.get("x-ratelimit-limit-requests")
    return Outcome(began, took, response.status_code, limit)


class Traffic:
    """Requests from two threads: one repeats a question (cache hits), one asks new
    ones (misses, then stores)."""

    def __init__(self, gateway: Gateway) -> None:
        self.outcomes: list[Outcome] = []
        self._gateway = gateway
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(2)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, thread: int) -> None:
        with httpx.Client(timeout=30.0) as client:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                content = "the same question" if thread == 0 else f"question {n}"
                self.outcomes.append(post(client, self._gateway, TRAFFIC, content))
                time.sleep(0.01)  # pacing, not waiting: a steady, modest load


@contextlib.contextmanager
def paused(redis_url: str) -> Iterator[None]:
    """SIGSTOP the redis-server behind ``redis_url``; SIGCONT on leaving, whatever
    happened (a stopped Redis would hold the test's clean-up)."""
    client = redis.Redis.from_url(redis_url)
    pid = int(client.info("server")["process_id"])
    client.close()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def ratelimit_errors(gateway: Gateway) -> float:
    found = re.search(
        r'^vgate_redis_errors_total\{component="ratelimit"\} (\S+)$', gateway.metrics(), re.M
    )
    return float(found.group(1)) if found else 0.0


def test_a_paused_redis_delays_no_request_beyond_its_deadline(stub: Stub, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis())
        config = _config(stub, redis_url)
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(config, tmp_path))
        client = stack.enter_context(httpx.Client(timeout=30.0))
        warm = post(client, gateway, TRAFFIC, "warm-up")
        assert (warm.status, warm.limit) == (200, str(RPM))  # decided in Redis

        with Traffic(gateway) as traffic:
            _wait_for(lambda: len(traffic.outcomes) >= 20, "no traffic before the pause")
            with paused(redis_url):
                stopped = time.monotonic()
                probes = [post(client, gateway, PROBE, f"probe {n}") for n in range(4)]
                time.sleep(max(0.0, stopped + PAUSE_S - time.monotonic()))  # the pause itself
                resumed = time.monotonic()
            recovered = _wait_for_redis(client, gateway)

        during = [o for o in traffic.outcomes if stopped <= o.began < resumed]
        slowest = max(traffic.outcomes + probes, key=lambda o: o.took)
        assert slowest.took <= TIMEOUT_S + BUDGET_S, slowest
        assert during, "no request was made while Redis was paused"
        assert {o.status for o in traffic.outcomes} == {200}, traffic.outcomes
        # The policy applied: `local` decided in memory, with this replica's share ...
        assert str(RPM // REPLICAS) in {o.limit for o in during}
        # ... and a limited key was still limited (2 of 4: its share, not fail_open).
        assert [(p.status, p.limit) for p in probes] == [(200, "2")] * 2 + [(429, "2")] * 2
        errors = ratelimit_errors(gateway)
        assert errors > 0  # the failures were counted ...
        after = [post(client, gateway, TRAFFIC, f"after {n}") for n in range(10)]
        assert {(o.status, o.limit) for o in after} == {(200, str(RPM))}
        assert ratelimit_errors(gateway) == errors  # ... and stopped once Redis was back
        assert recovered - resumed < 10.0


def _config(stub: Stub, redis_url: str) -> dict[str, object]:
    return {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url, "timeout_s": TIMEOUT_S, "retry_s": 0.5},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": "traffic", "key": TRAFFIC, "rpm": RPM},
                {"name": "probe", "key": PROBE, "rpm": PROBE_RPM},
            ],
        },
        "ratelimit": {"on_redis_error": "local", "replicas_hint": REPLICAS},
        "cache": {"enabled": True, "namespace": f"pause-{os.getpid()}-{time.time_ns()}"},
    }


def _wait_for(condition: Callable[[], bool], message: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def _wait_for_redis(client: httpx.Client, gateway: Gateway) -> float:
    """When a request was first decided in Redis again after the pause."""
    deadline = time.monotonic() + 10.0
    while True:
        outcome = post(client, gateway, TRAFFIC, "are you back?")
        if outcome.limit == str(RPM):
            return time.monotonic()
        assert time.monotonic() < deadline, "the gateway did not use Redis again"
        time.sleep(0.05)
