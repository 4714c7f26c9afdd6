"""Redis faults under the mixed load (:mod:`tests.integration.faults_s13_world`): paused
(SIGSTOP, 3 s), its clients killed (``CLIENT KILL``), full (``maxmemory`` 1 under
``noeviction``), killed and started again on its port with no data; under both
``on_redis_error`` policies that keep limits, with one worker and two. Every response a
client got an id for while Redis answered (paused for less than the store's 5 s
deadline included) can be retrieved, and the key's stored bytes count exactly its
records.

Found here: follow-ups of one key on a paused Redis each waited the store's whole
deadline in turn (four at a time), the twelfth answered after 15 s; now the reads
behind a call Redis did not answer fail at once (503 ``response_store_unavailable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import openai
import pytest
import redis

from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, start_gateway
from tests.integration.faults_s13_world import (
    KEY,
    KINDS,
    SLOTS,
    check_outcomes,
    condition,
    config,
    no_tracebacks,
    redis_pid,
    redis_reachable,
    running_load,
    settled,
    stored,
    stub_engine,
)


@pytest.mark.parametrize(("policy", "workers"), [("local", 1), ("fail_closed", 1), ("local", 2)])
async def test_redis_faults_under_mixed_load_keep_every_promise(
    policy: str, workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    redis_port, engine_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        redis_stack = stack.enter_context(contextlib.ExitStack())
        redis_url = redis_stack.enter_context(run_redis(redis_port))
        stack.enter_context(stub_engine(engine_port))
        cfg = config(redis_url, f"http://127.0.0.1:{engine_port}")
        cfg["ratelimit"] = {"on_redis_error": policy}
        cfg["server"] = {"workers": workers}
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        async with running_load(gateway) as load:
            # 1. Paused for 3 s: shorter than the store's deadline, so nothing is lost.
            pid = redis_pid(redis_port)
            os.kill(pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                await load.answers(len(KINDS))
                while time.monotonic() - paused_at < 3.0:
                    await asyncio.sleep(0.05)
            finally:
                os.kill(pid, signal.SIGCONT)
            await load.answers(len(KINDS))
            paused_ids: list[str] = [
                o.response_id
                for o in load.outcomes
                if o.response_id is not None and o.began >= paused_at - 1
            ]
            assert len(paused_ids) >= (2 if policy == "local" else 0), load.outcomes
            missing = {i: s for i in paused_ids if (s := await stored(gateway, i)) != 200}
            assert not missing, missing
            # 2. Its clients killed, several times.
            for _ in range(3):
                admin.client_kill_filter(_type="normal")
                await load.answers(3)
            # 3. Full: writes fail with OOM.
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            try:
                await load.answers(len(KINDS))
            finally:
                admin.config_set("maxmemory", 0)
            await load.answers(len(KINDS))
            # The key's stored bytes count exactly its records (none counted in vain).
            # (Read while the load writes: a record counted a moment before it is written.)
            await load.answers(len(KINDS))

            def counted_exactly() -> bool:
                sizes = {
                    (k.decode() if isinstance(k, bytes) else k): int(v)
                    for k, v in admin.hgetall("vgate:responses:owner:{faults}:size").items()
                }
                total = sizes.pop("#", 0)
                real = {i: admin.strlen(f"vgate:responses:{i}") for i in sizes}
                return sizes == real and total == sum(sizes.values())

            await condition(
                lambda: asyncio.to_thread(counted_exactly), 5.0, "a record counted in vain"
            )
            # 4. Killed, then started again on its port with no data.
            admin.close()
            redis_stack.close()
            await load.answers(len(KINDS))
            await asyncio.to_thread(redis_stack.enter_context, run_redis(redis_port))
            await condition(lambda: redis_reachable(gateway), 10.0, "redis never back")
            restarted_at = time.monotonic()

            async def storing_again() -> bool:  # fail_closed: 503 until the limiter retries
                return any(o.response_id and o.began > restarted_at for o in load.outcomes)

            await condition(storing_again, 10.0, "no response stored since the restart")
            await load.answers(len(KINDS))
        check_outcomes(load.outcomes)
        await condition(lambda: settled(gateway), 10.0, "not settled after the faults")
        restarted = redis.Redis.from_url(redis_url)
        stack.callback(restarted.close)
        await condition(
            lambda: asyncio.to_thread(lambda: restarted.zcard(SLOTS) == 0), 5.0, "slots left"
        )
        since = [o.response_id for o in load.outcomes if o.response_id and o.began > restarted_at]
        missing = {i: s for i in since if (s := await stored(gateway, i)) != 200}
        assert not missing, missing
        no_tracebacks(tmp_path)


async def test_follow_ups_on_a_paused_redis_wait_one_store_deadline_not_a_queue_of_them(
    tmp_path: Path,
) -> None:
    """Follow-ups of one key load their previous record four at a time; with Redis
    paused, each waited the store's full deadline (5 s) in turn, so the twelfth was
    answered after 15 s. Now the first deadline that passes makes the reads behind it
    fail at once (503 ``response_store_unavailable``), and once Redis is back the
    conversation goes on."""
    follow_ups = 12
    engine_port = free_port()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stack.enter_context(stub_engine(engine_port))
        cfg = config(redis_url, f"http://127.0.0.1:{engine_port}")
        cfg["auth"]["keys"][0]["max_concurrent"] = 100
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=60
        ) as client:
            first = await client.responses.create(model=STUB_MODEL, input="hello")

            async def follow_up() -> tuple[float, str]:
                began = time.monotonic()
                try:
                    await client.responses.create(
                        model=STUB_MODEL, input="more", previous_response_id=first.id
                    )
                    return time.monotonic() - began, "answered"
                except openai.APIStatusError as exc:
                    code = exc.body.get("code") if isinstance(exc.body, dict) else None
                    return time.monotonic() - began, f"{exc.status_code} {code}"

            pid = redis_pid(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
            os.kill(pid, signal.SIGSTOP)
            try:
                answers = await asyncio.gather(*(follow_up() for _ in range(follow_ups)))
            finally:
                os.kill(pid, signal.SIGCONT)
            assert {a for _, a in answers} == {"503 response_store_unavailable"}, answers
            assert max(took for took, _ in answers) < 5.0 + 2.5, sorted(answers)

            async def goes_on() -> bool:
                return (await follow_up())[1] == "answered"

            await condition(goes_on, 10.0, "the conversation never went on")
