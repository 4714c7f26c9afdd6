"""Multi-node on one machine, for real: two engine supervisors (stub engines) and three
gateway processes sharing one Redis. Every gateway sees every engine through the
registry; a supervisor's death takes its engines out of every gateway within the
heartbeat TTL; rate limits and the response cache are shared by all gateways."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from gateway.pool.display import engine_id
from tests.helpers.processes import free_port, run_process
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, Gateway
from tests.integration.test_managed_engines import ready_records, wait_for

TTL_S = 1.5
KEY = "sk-multi-node-0123456789"
LIMITED_KEY = "sk-multi-node-limited-0123456789"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


class Cluster:
    def __init__(self, redis_url: str, supervisors: list[Any], gateways: list[Gateway]) -> None:
        self.redis_url = redis_url
        self.supervisors = supervisors
        self.gateways = gateways

    def engines_seen(self, gateway: Gateway) -> set[str]:
        """The engines in the gateway's pool (from the registry), healthy or not."""
        engines = gateway.ready()["engines"]
        return set(engines.get(STUB_MODEL, {}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("multi-node")
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis())
        supervisors = []
        for index in range(2):
            config = {
                "redis": {"url": redis_url},
                "engines": {"heartbeat_s": 0.3, "registry_ttl_s": TTL_S,
                            "log_dir": str(directory / f"logs-{index}")},
                "models": [{"name": STUB_MODEL, "engine": {"kind": "stub", "replicas": 2}}],
            }  # fmt: skip
            path = directory / f"supervisor-{index}.yaml"
            path.write_text(yaml.safe_dump(config))
            argv = [sys.executable, "-m", "gateway", "engines", "run", "--config", str(path)]
            supervisors.append(stack.enter_context(run_process(argv, ready_url=None)))
        wait_for(lambda: len(ready_records(redis_url)) == 4, 30, "four ready engines")
        gateways = []
        for index in range(3):
            config = {
                "redis": {"url": redis_url},
                "engines": {"watch_interval_s": 0.2},
                "upstream": {"health_interval_s": 0.5},
                "auth": {
                    "enabled": True,
                    "keys": [
                        {"name": "shared", "key": KEY},
                        {"name": "limited", "key": LIMITED_KEY, "rpm": 6},
                    ],
                },
                "cache": {"enabled": True},
                "server": {"admin_port": (admin_port := free_port()), "debug_headers": True},
            }
            path = directory / f"gateway-{index}.yaml"
            path.write_text(yaml.safe_dump(config))
            port = free_port()
            argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                    "--port", str(port)]  # fmt: skip
            stack.enter_context(run_process(argv, f"http://127.0.0.1:{port}/health"))
            gateways.append(Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"))
        yield Cluster(redis_url, supervisors, gateways)


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)


def test_every_gateway_sees_every_engine(cluster: Cluster) -> None:
    urls = {record.url for record in ready_records(cluster.redis_url)}
    assert len(urls) == 4
    for gateway in cluster.gateways:

        def sees_all(g: Gateway = gateway) -> bool:
            return cluster.engines_seen(g) == urls

        wait_for(sees_all, 5, "all four engines")


def test_the_cache_is_shared_by_every_gateway(cluster: Cluster) -> None:
    states = [
        client(g)
        .chat.completions.with_raw_response.create(
            model=STUB_MODEL, messages=MESSAGES, temperature=0, max_tokens=3
        )
        .headers["x-cache"]
        for g in cluster.gateways
    ]
    assert states == ["MISS", "HIT", "HIT"]


def test_one_rate_limit_holds_across_every_gateway(cluster: Cluster) -> None:
    statuses = []
    for index in range(12):
        gateway = cluster.gateways[index % 3]
        body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": f"q{index}"}]}
        headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
        reply = httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)
        statuses.append(reply.status_code)
    assert statuses == [200] * 6 + [429] * 6  # 6 per minute for the three gateways together


def test_a_dead_supervisors_engines_leave_every_gateway_within_the_ttl(cluster: Cluster) -> None:
    victim = cluster.supervisors[0]
    before = ready_records(cluster.redis_url)
    doomed = {r.url for r in before if r.supervisor == _supervisor_of(before, cluster, victim)}
    survivors = {r.url for r in before} - doomed
    assert len(doomed) == 2 and len(survivors) == 2
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)  # its engines follow it (PR_SET_PDEATHSIG)
    for gateway in cluster.gateways:

        def sees_survivors(g: Gateway = gateway) -> bool:
            return cluster.engines_seen(g) == survivors

        wait_for(sees_survivors, TTL_S + 3, "the gateway to drop the dead supervisor's engines")
    assert time.monotonic() - killed_at <= TTL_S + 1.5  # the TTL, one watch period, slack
    assert {r.url for r in ready_records(cluster.redis_url)} == survivors
    answer = client(cluster.gateways[0]).chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=[{"role": "user", "content": "still there?"}],
        extra_headers={"Cache-Control": "no-store"},
    )  # fmt: skip
    assert answer.headers["x-vgate-engine"] in {engine_id(url) for url in survivors}


def _supervisor_of(records: list[Any], cluster: Cluster, process: Any) -> str:
    """The registry id of a supervisor process: the one whose engines are its children."""
    children = _children(process.pid)
    for record in records:
        pid = httpx.get(f"{record.url}/stub/stats").json()["pid"]
        if pid in children:
            return str(record.supervisor)
    raise AssertionError("no engine of this supervisor in the registry")


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found
