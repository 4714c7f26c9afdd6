"""A saturated engine is busy, not stuck: the supervisor does not restart it.

The stuck probe (a 1-token completion) waits its turn behind the running requests; an
engine busier than ``probe_timeout_s`` failed it and was restarted, killing every
request it was serving. Now a failed probe counts as stuck only when the engine
generated no token meanwhile (``vllm:generation_tokens_total``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx

from engines.deployment import Deployment
from engines.registry import InProcessRegistry
from engines.spec import EngineSpec
from engines.supervisor import EngineSupervisor
from tests.helpers.waiting import until

MODEL = "busy-model"


def slow_engine(tmp_path: Path, **spec: Any) -> Deployment:
    """Every answer of this stub takes 0.6 s unless the request says otherwise: twice
    the probe's timeout."""
    health = {"interval_s": 0.1, "probe_interval_s": 0.2, "probe_timeout_s": 0.3}
    engine = EngineSpec(kind="stub", extra_args=("--ttft-ms", "600"), health=health, **spec)
    return Deployment(MODEL, engine, "unused", sys.executable, tmp_path)


async def keep_busy(url: str, headers: dict[str, str]) -> None:
    """Completions back to back, as a loaded engine serves them (each answered in 0.1 s,
    so tokens keep coming while the probe, at the engine's 0.6 s, times out)."""
    body = {"model": MODEL, "prompt": "work", "max_tokens": 8, "stub": {"ttft_ms": 100}}
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            response = await client.post(f"{url}/v1/completions", json=body, headers=headers)
            assert response.status_code == 200


async def test_a_saturated_engine_is_not_restarted_as_stuck(tmp_path: Path) -> None:
    messages: list[str] = []
    supervisor = EngineSupervisor([slow_engine(tmp_path)], InProcessRegistry(), messages.append)
    await supervisor.start()
    load: list[asyncio.Task[None]] = []
    try:
        assert await supervisor.wait_ready()
        slot = supervisor.slots[0]
        process = slot.process
        assert process is not None
        headers = process.plan.auth_headers()
        load = [asyncio.create_task(keep_busy(process.plan.url, headers)) for _ in range(3)]

        def busy_probes() -> int:
            return sum("busy, not stuck" in message for message in messages)

        await until(lambda: busy_probes() >= 3 or slot.restarts > 0, 15)
        assert slot.restarts == 0, messages
        assert slot.ready.is_set()
        assert not any("stuck: a probe" in message for message in messages)
    finally:
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)  # (the engine may be gone)
        await supervisor.stop()


async def test_a_slow_engine_doing_nothing_is_still_stuck(tmp_path: Path) -> None:
    """Without work to show for it, a failed probe still means stuck."""
    messages: list[str] = []
    engine = slow_engine(tmp_path, restart={"max_restarts": 5, "backoff_initial_s": 0.1})
    supervisor = EngineSupervisor([engine], InProcessRegistry(), messages.append)
    await supervisor.start()
    try:
        await until(lambda: supervisor.slots[0].restarts >= 1, 15)
        assert any("stuck: a probe of /v1/completions failed" in m for m in messages)
    finally:
        await supervisor.stop()
