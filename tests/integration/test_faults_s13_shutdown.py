"""SIGTERM with streams in flight (:mod:`tests.integration.faults_s13_world`): with time
enough they finish and are stored (Redis paused meanwhile too); cut at
``server.shutdown_timeout_s``, each gets ``shutting_down``; with two workers, the one
signalled drains while the other serves, and is replaced. Slots are freed in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import openai
import pytest
import redis

from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import Gateway, start_gateway
from tests.integration.faults_s13_world import (
    DEADLINE_S,
    KEY,
    KINDS,
    SLOTS,
    ask,
    check_outcomes,
    condition,
    config,
    in_flight_at,
    redis_pid,
    running_load,
    stored,
    stub_engine,
)
from tests.integration.test_operator_listener import _listening_pids
from tests.integration.test_shutdown import gateway_process


@pytest.mark.parametrize(("drain_s", "redis_pause_s"), [(15, 0), (1, 0), (15, 3)])
async def test_sigterm_with_streams_in_flight(
    drain_s: int, redis_pause_s: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams (chat and Responses) in flight at SIGTERM: with time enough they all
    finish and every stored response can be retrieved through another gateway (Redis
    paused meanwhile for less than the store's deadline included); cut at the deadline,
    each gets the ``shutting_down`` error (503, or an error event). Either way the
    gateway exits cleanly and frees its slots in Redis."""
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    engine_port = free_port()
    engine_url = f"http://127.0.0.1:{engine_port}"
    kinds = ["chat_stream", "resp_stream", "chat"] * 2  # a Responses answer is instant
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stack.enter_context(stub_engine(engine_port, "--itl-ms", "300", "--ttft-ms", "300"))
        cfg = config(redis_url, engine_url)
        cfg["server"] = {"shutdown_timeout_s": drain_s}
        cfg["upstream"]["read_timeout_s"] = 10  # a whole answer takes 2.4 s
        (gateway_dir := tmp_path / "first").mkdir()
        process, port, _, log_path = stack.enter_context(gateway_process(cfg, gateway_dir))
        first = Gateway(f"http://127.0.0.1:{port}")
        async with contextlib.AsyncExitStack() as clients:
            sdk = [
                await clients.enter_async_context(
                    openai.AsyncOpenAI(
                        base_url=first.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
                    )
                )
                for _ in kinds
            ]
            asked = [asyncio.create_task(ask(c, k)) for c, k in zip(sdk, kinds, strict=True)]
            await in_flight_at(engine_url, len(kinds))
            redis_process = redis_pid(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
            if redis_pause_s:
                os.kill(redis_process, signal.SIGSTOP)
            process.send_signal(signal.SIGTERM)
            try:
                if redis_pause_s:
                    await asyncio.sleep(redis_pause_s)  # the fault's length: its very point
            finally:
                os.kill(redis_process, signal.SIGCONT)
            outcomes = await asyncio.gather(*asked)
        await asyncio.to_thread(process.wait, drain_s + 10)
        log = log_path.read_text()
        assert "Traceback" not in log, log[-4000:]
        if drain_s > 5:
            assert all(o.good and not o.detail for o in outcomes), outcomes
        else:
            assert all(o.good and "shutting_down" in o.detail for o in outcomes), outcomes
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        await condition(
            lambda: asyncio.to_thread(lambda: admin.zcard(SLOTS) == 0), 5.0, "slots left taken"
        )
        ids = [o.response_id for o in outcomes if o.response_id is not None]
        assert len(ids) == (2 if drain_s > 5 else 0), outcomes
        second = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        missing = {i: s for i in ids if (s := await stored(second, i)) != 200}
        assert not missing, missing


def _worker_connections(pid: int, port: int) -> int:
    """Established connections to ``port`` that process ``pid`` holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    held = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                held += os.readlink(fd) in inodes
    return held


async def test_a_worker_sigtermed_under_load_drains_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, a load on both, streams in flight: one worker gets SIGTERM. Its
    streams finish (and are stored), the load goes on through the other with no
    error, and the supervisor starts a worker in its place."""
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    engine_port = free_port()
    engine_url = f"http://127.0.0.1:{engine_port}"
    kinds = ["chat_stream", "resp_stream"] * 4
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stack.enter_context(stub_engine(engine_port, "--itl-ms", "300", "--ttft-ms", "300"))
        cfg = config(redis_url, engine_url)
        cfg["server"] = {"shutdown_timeout_s": 15, "workers": 2}
        cfg["auth"]["keys"][0]["max_concurrent"] = 100  # the load and the streams
        cfg["upstream"]["read_timeout_s"] = 10
        process, port, admin_port, log_path = stack.enter_context(gateway_process(cfg, tmp_path))
        gateway = Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
        await condition(
            lambda: asyncio.to_thread(lambda: len(_listening_pids(admin_port)) == 2),
            30.0,
            "two workers serving",
        )
        workers = _listening_pids(admin_port)
        async with contextlib.AsyncExitStack() as clients, running_load(gateway) as load:
            sdk = [
                await clients.enter_async_context(
                    openai.AsyncOpenAI(
                        base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
                    )
                )
                for _ in kinds
            ]
            asked = [asyncio.create_task(ask(c, k)) for c, k in zip(sdk, kinds, strict=True)]
            await in_flight_at(engine_url, len(kinds))
            busiest = max(workers, key=lambda pid: _worker_connections(pid, port))
            assert _worker_connections(busiest, port) > 0
            os.kill(busiest, signal.SIGTERM)
            outcomes = await asyncio.gather(*asked)
            await condition(
                lambda: asyncio.to_thread(
                    lambda: len(now := _listening_pids(admin_port)) == 2 and busiest not in now
                ),
                30.0,
                "the worker was not replaced",
            )
            await load.answers(len(KINDS))
        assert all(o.good and not o.detail for o in outcomes), outcomes
        check_outcomes(load.outcomes)
        ids = [o.response_id for o in outcomes if o.response_id is not None]
        missing = {i: s for i in ids if (s := await stored(gateway, i)) != 200}
        assert not missing, missing
        assert process.poll() is None
        assert "Traceback" not in log_path.read_text()
