"""Supervisor behaviour with stub engines: restart budget, stuck engines, graceful drain."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engines.registry import InProcessRegistry
from engines.spec import EngineSpec
from engines.supervisor import Deployment, EngineSupervisor, RestartBudget
from gateway.background import Periodic
from gateway.pool.engine_pool import EnginePool
from gateway.pool.sources import RegistryWatcher

MODEL = "stub-model"


def deployment(tmp_path: Path, **spec: Any) -> Deployment:
    engine = EngineSpec.model_validate({"kind": "stub"} | spec)
    return Deployment(MODEL, engine, "unused", sys.executable, tmp_path)


async def wait_until(condition: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def test_restart_budget_is_a_sliding_window() -> None:
    now = [0.0]
    budget = RestartBudget(limit=2, window_s=10, clock=lambda: now[0])
    assert budget.take() and budget.take()
    assert not budget.take()
    now[0] = 10.5
    assert budget.take()


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = EngineSpec(kind="stub").restart.model_copy(
        update={"backoff_initial_s": 1, "backoff_max_s": 5}
    )
    assert [policy.backoff(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


async def test_crash_restarts_with_backoff_then_budget_spent_fails_it(tmp_path: Path) -> None:
    registry = InProcessRegistry()
    messages: list[str] = []
    spec = {
        "restart": {"max_restarts": 1, "backoff_initial_s": 0.3},
        "health": {"interval_s": 0.1},
    }
    supervisor = EngineSupervisor([deployment(tmp_path, **spec)], registry, messages.append)
    pool = EnginePool({MODEL: ()})
    watcher = RegistryWatcher(registry, pool, {MODEL: ()}, {})
    watching = Periodic("registry-watch", 0.05, watcher.refresh_or_keep)
    await supervisor.start()
    await watching.start()
    try:
        assert await supervisor.wait_ready()
        slot = supervisor.slots[0]
        await wait_until(lambda: len(pool.snapshot(MODEL)) == 1, 2)
        first_url = pool.snapshot(MODEL)[0].url

        assert slot.process is not None
        slot.process.kill()
        await wait_until(lambda: not pool.snapshot(MODEL), 2)
        await wait_until(lambda: slot.ready.is_set() and slot.restarts == 1, 10)
        await wait_until(lambda: len(pool.snapshot(MODEL)) == 1, 2)
        assert pool.snapshot(MODEL)[0].url != first_url
        assert any("restart 1 in 0.3 s" in m for m in messages)

        slot.process.kill()  # the budget allows one restart: this one is fatal
        await wait_until(slot.failed.is_set, 5)
        records = await registry.records()
        assert [r.state for r in records] == ["failed"]
        await wait_until(lambda: not pool.snapshot(MODEL), 2)
        assert not await supervisor.wait_ready()
    finally:
        await watching.stop()
        await supervisor.stop()


async def test_engine_that_stops_completing_is_restarted(tmp_path: Path) -> None:
    messages: list[str] = []
    spec = {
        "extra_args": ["--hang"],  # /health answers, completions never do
        "restart": {"max_restarts": 5, "backoff_initial_s": 0.1},
        "health": {"interval_s": 0.1, "probe_interval_s": 0.3, "probe_timeout_s": 0.5},
    }
    supervisor = EngineSupervisor([deployment(tmp_path, **spec)], InProcessRegistry(),
                                  messages.append)  # fmt: skip
    await supervisor.start()
    try:
        await wait_until(lambda: supervisor.slots[0].restarts >= 1, 10)
        assert any("stuck" in m for m in messages)
    finally:
        await supervisor.stop()


async def test_stop_drains_running_requests_first(tmp_path: Path) -> None:
    registry = InProcessRegistry()
    spec = {"health": {"drain_timeout_s": 10}}
    supervisor = EngineSupervisor([deployment(tmp_path, **spec)], registry, lambda _: None)
    await supervisor.start()
    assert await supervisor.wait_ready()
    slot = supervisor.slots[0]
    assert slot.process is not None
    url = slot.process.plan.url
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "long"}],
        "stream": True,
        "stub": {"tokens": 15, "itl_ms": 100},
    }
    async with aiohttp.ClientSession() as session:
        headers = slot.process.plan.auth_headers()  # managed engines demand their key
        async with session.post(
            f"{url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            first = await response.content.readline()
            assert first.startswith(b"data: ")
            stopping = asyncio.create_task(supervisor.stop())
            await asyncio.sleep(0.2)
            states = [r.state for r in await registry.records()]
            assert states == ["draining"]
            rest = await response.content.read()
        await stopping
    assert rest.rstrip().endswith(b"data: [DONE]"), "the stream was cut by the stop"
    assert await registry.records() == []
    assert not slot.process.alive


def test_invalid_specs_fail_with_a_clear_message() -> None:
    cases = [
        ({"device": "cpu", "tensor_parallel_size": 2}, "tensor_parallel_size > 1 needs"),
        ({"device": "cuda", "replicas": 2, "gpu_ids": [[0]]}, "gpu_ids has 1 entries"),
        ({"speculative": {"method": "magic", "num_speculative_tokens": 3}}, "speculative.method"),
        ({"speculative": {"method": "ngram"}}, "num_speculative_tokens"),
        ({"extra_args": ["--port=9"]}, "extra_args may not set --port"),
        ({"replicas": 0}, "replicas"),
        ({"dtype": "float64"}, "dtype"),
        ({"bogus": 1}, "bogus"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            EngineSpec.model_validate(fields)
