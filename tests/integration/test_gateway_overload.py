"""Stub engines under load: least-outstanding spreading, a kill -9 under a steady
50 req/s, admission control (queue, then 503 + Retry-After), per-engine metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def body(stream: bool = False, **stub: float) -> dict[str, Any]:
    return {"model": STUB_MODEL, "messages": MESSAGES, "stream": stream, "stub": stub}


@contextlib.contextmanager
def stubs(count: int) -> Iterator[list[tuple[Stub, int]]]:
    """Stub engines and their process ids (to kill them)."""
    with contextlib.ExitStack() as stack:
        started = []
        for _ in range(count):
            port = free_port()
            argv = [
                sys.executable,
                "-m",
                "engines.stub",
                "--port",
                str(port),
                "--model",
                STUB_MODEL,
            ]
            process = stack.enter_context(
                run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30)
            )
            started.append((Stub(f"http://127.0.0.1:{port}"), process.pid))
        yield started


@contextlib.contextmanager
def gateway(engines: list[Stub], directory: Path, **sections: Any) -> Iterator[Gateway]:
    model = {"name": STUB_MODEL, "endpoints": [s.url for s in engines]}
    model.update(sections.pop("model", {}))
    yield from start_gateway({"models": [model], **sections}, directory)


def burst(gw: Gateway, count: int, **stub: float) -> list[httpx.Response]:
    """``count`` identical requests at once."""

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{gw.base_url}/chat/completions"
            payload = {"model": STUB_MODEL, "messages": MESSAGES, "stub": stub}
            return await asyncio.gather(*(client.post(url, json=payload) for _ in range(count)))

    return asyncio.run(send())


def test_least_outstanding_spreads_slow_requests_evenly(tmp_path: Path) -> None:
    with stubs(3) as running:
        engines = [stub for stub, _ in running]
        with gateway(engines, tmp_path) as gw:
            before = [s.stats()["requests"] for s in engines]
            assert [r.status_code for r in burst(gw, 9, ttft_ms=600)] == [200] * 9
            spread = [s.stats()["requests"] - b for s, b in zip(engines, before, strict=True)]
            assert spread == [3, 3, 3]
            metrics = gw.metrics()
            for stub in engines:
                assert f'vgate_engine_requests_total{{engine="{stub.url}"}} 3.0' in metrics
                assert f'vgate_engine_breaker_open{{engine="{stub.url}"}} 0.0' in metrics


async def _steady_load(base_url: str, rate: float, seconds: float) -> dict[str, Counter[str]]:
    """Half streams, half not, at ``rate`` requests/s; outcome counts per kind."""
    outcomes: dict[str, Counter[str]] = {"plain": Counter(), "stream": Counter()}

    async def one(client: httpx.AsyncClient, index: int) -> None:
        if index % 2:
            reply = await client.post(f"{base_url}/chat/completions", json=body(ttft_ms=80))
            outcomes["plain"][
                "ok" if reply.status_code == 200 else f"http {reply.status_code}"
            ] += 1
            return
        request = body(stream=True, ttft_ms=20, itl_ms=10, tokens=20)
        async with client.stream("POST", f"{base_url}/chat/completions", json=request) as reply:
            if reply.status_code != 200:
                outcomes["stream"][f"http {reply.status_code}"] += 1
                return
            events = [line async for line in reply.aiter_lines() if line.startswith("data: {")]
        failed = any("error" in orjson.loads(e[6:]) for e in events)
        outcomes["stream"]["failed after it began" if failed else "ok"] += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        tasks = []
        started = time.monotonic()
        for index in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(client, index)))
        await asyncio.gather(*tasks)
    return outcomes


async def _kill_during_load(base_url: str, victim_pid: int) -> dict[str, Counter[str]]:
    load = asyncio.create_task(_steady_load(base_url, rate=50, seconds=4))
    await asyncio.sleep(1.5)
    os.killpg(victim_pid, signal.SIGKILL)
    return await load


def test_kill_9_of_an_engine_under_50_rps_fails_no_request_that_had_not_begun(
    tmp_path: Path,
) -> None:
    with stubs(3) as running:
        engines = [stub for stub, _ in running]
        with gateway(engines, tmp_path, upstream={"retries": 2, "health_interval_s": 0.5}) as gw:
            outcomes = asyncio.run(_kill_during_load(gw.base_url, running[0][1]))
            assert (
                sum(outcomes["plain"].values()) == 100 and sum(outcomes["stream"].values()) == 100
            )
            assert outcomes["plain"] == Counter({"ok": 100}), outcomes
            # Streams on the killed engine that had begun may end with an error event;
            # none may fail before its first event.
            assert not [k for k in outcomes["stream"] if k.startswith("http")], outcomes
            assert outcomes["stream"]["ok"] >= 90, outcomes


def test_saturated_engines_queue_briefly_then_shed_with_503(tmp_path: Path) -> None:
    with stubs(1) as running:
        engines = [stub for stub, _ in running]
        overload = {"max_in_flight": 2, "queue_size": 2, "queue_timeout_s": 0.5}
        with gateway(engines, tmp_path, overload=overload) as gw:
            replies = burst(gw, 8, ttft_ms=1500)
            assert sorted(r.status_code for r in replies) == [200] * 2 + [503] * 6
            shed = [r for r in replies if r.status_code == 503]
            assert all(r.json()["error"]["code"] == "overloaded" for r in shed)
            assert all(r.headers["retry-after"] == "1" for r in shed)
            assert f'vgate_shed_requests_total{{model="{STUB_MODEL}"}} 6.0' in gw.metrics()


def test_a_queued_request_goes_through_once_an_engine_frees_up(tmp_path: Path) -> None:
    with stubs(1) as running:
        engines = [stub for stub, _ in running]
        model = {"overload": {"max_in_flight": 1, "queue_timeout_s": 10}}
        with gateway(engines, tmp_path, model=model) as gw:
            started = time.monotonic()
            assert [r.status_code for r in burst(gw, 3, ttft_ms=300)] == [200] * 3
            assert time.monotonic() - started >= 0.85  # one at a time: they waited their turn
            assert engines[0].stats()["in_flight"] == 0
