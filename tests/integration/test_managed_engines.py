"""Engines launched by `vgate engines run`, found by `vgate serve` through Redis.

Stub engines stand in for vLLM here (``kind: stub``): the supervisor logic is
the same, and these tests run in seconds. tests/e2e does the same with vLLM.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import yaml
from openai.types.chat import ChatCompletionMessageParam

from engines.registry import REDIS_KEY, EngineRecord
from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``condition()``; return the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def ready_records(url: str) -> list[EngineRecord]:
    client = redis.Redis.from_url(url)
    records = [EngineRecord.decode(v) for v in client.hgetall(REDIS_KEY).values()]
    client.close()
    return [r for r in records if r.state == "ready" and r.expires_at > time.time()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split()[2] != "Z"


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[tuple[Any, Gateway, str]]:
    redis.Redis.from_url(redis_url).delete(REDIS_KEY)
    engines_config = {
        "redis": {"url": redis_url},
        "engines": {"heartbeat_s": 0.3, "registry_ttl_s": 1.5, "log_dir": str(tmp_path)},
        "models": [
            {
                "name": STUB_MODEL,
                "engine": {
                    "kind": "stub",
                    "replicas": 2,
                    "restart": {"backoff_initial_s": 0.2},
                    "health": {"interval_s": 0.2, "probe_interval_s": 1},
                },
            }
        ],
    }
    admin_port = free_port()
    gateway_config = {
        "redis": {"url": redis_url},
        "engines": {"watch_interval_s": 0.2},
        "upstream": {"health_interval_s": 0.5},
        "server": {"admin_port": admin_port},
    }
    (tmp_path / "engines.yaml").write_text(yaml.safe_dump(engines_config))
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(gateway_config))
    supervisor_argv = [sys.executable, "-m", "gateway", "engines", "run", "--config",
                       str(tmp_path / "engines.yaml")]  # fmt: skip
    port = free_port()
    gateway_argv = [sys.executable, "-m", "gateway", "serve", "--config",
                    str(tmp_path / "gateway.yaml"), "--port", str(port)]  # fmt: skip
    with run_process(supervisor_argv, ready_url=None) as supervisor:
        wait_for(lambda: len(ready_records(redis_url)) == 2, 30, "two ready engines")
        with run_process(gateway_argv, f"http://127.0.0.1:{port}/health"):
            admin_url = f"http://127.0.0.1:{admin_port}"
            yield supervisor, Gateway(f"http://127.0.0.1:{port}", admin_url), redis_url


def engine_urls(gateway: Gateway) -> set[str]:
    engines = gateway.ready()["engines"]
    return set(engines.get(STUB_MODEL, {}))


def test_gateway_follows_the_registry_live(cluster: tuple[Any, Gateway, str]) -> None:
    supervisor, gateway, redis_url = cluster
    wait_for(lambda: len(engine_urls(gateway)) == 2, 5, "gateway to see both engines")
    assert [m.id for m in gateway.client().models.list().data] == [STUB_MODEL]

    client = gateway.client()
    for _ in range(8):
        assert client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES).choices
    stats = [httpx.get(f"{url}/stub/stats").json() for url in sorted(engine_urls(gateway))]
    assert all(s["requests"] > 0 for s in stats), "both replicas should take traffic"

    # kill -9 one engine: it leaves the pool, the supervisor restarts it, it comes back.
    victim_url = sorted(engine_urls(gateway))[0]
    victim_pid = stats[0]["pid"]
    os.kill(victim_pid, signal.SIGKILL)
    wait_for(lambda: victim_url not in engine_urls(gateway), 3, "dead engine to leave routing")
    assert client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES).choices
    wait_for(lambda: len(engine_urls(gateway)) == 2, 15, "restarted engine to come back")
    restarted = [r for r in ready_records(redis_url) if r.restarts == 1]
    assert len(restarted) == 1
    assert client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES).choices

    # The supervisor dies hard: its engines die with it, and their records expire.
    engine_pids = [httpx.get(f"{u}/stub/stats").json()["pid"] for u in engine_urls(gateway)]
    os.killpg(supervisor.pid, signal.SIGKILL)
    took = wait_for(lambda: not engine_urls(gateway), 5, "engines to expire from the gateway")
    assert took <= 1.5 + 1.0  # the TTL plus one watch period and a probe of slack
    wait_for(lambda: not any(pid_alive(p) for p in engine_pids), 5, "engines to exit")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
