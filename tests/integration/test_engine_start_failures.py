"""Honest supervision and engine hygiene with real processes: a start that cannot succeed
is reported at once with its cause and fix, `vgate up` and `vgate engines run` exit
non-zero, a failed engine never holds up the draining of a healthy one, and an engine
gets neither vgate's secrets nor a readable log.

The failing engine is a vLLM engine whose interpreter is the gateway's own (which has
no vLLM): the mistake users make after a plain `pip install`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from engines.process import EngineProcess
from engines.registry import InProcessRegistry
from engines.spec import EngineSpec
from engines.supervisor import Deployment, EngineSupervisor
from tests.helpers.processes import free_port

STUB = "stub-model"


def no_vllm_config(tmp_path: Path, **extra: Any) -> Path:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = {
        "engines": {"python": sys.executable, "log_dir": str(tmp_path / "logs")},
        "models": [{"name": "needs-vllm", "engine": {"source": str(model_dir)}}],
        **extra,
    }
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_vgate(*args: str, timeout: float) -> tuple[int, str, float]:
    """Run ``python -m gateway *args`` to its end; its status, output and duration."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_up_exits_at_once_when_the_engine_interpreter_lacks_vllm(tmp_path: Path) -> None:
    config = no_vllm_config(tmp_path)
    code, output, took = run_vgate("up", "--config", str(config), "--port", str(free_port()),
                                   timeout=30)  # fmt: skip
    assert code != 0, output
    assert took < 30
    assert "vLLM is not installed" in output and sys.executable in output
    assert "scripts/install_engine.sh" in output and "engines.python" in output
    assert "needs-vllm" in output


def test_engines_run_exits_non_zero_when_every_engine_failed(
    tmp_path: Path, redis_url: str
) -> None:
    config = no_vllm_config(tmp_path, redis={"url": redis_url})
    code, output, took = run_vgate("engines", "run", "--config", str(config), timeout=30)
    assert code == 1, output
    assert took < 30
    assert "vLLM is not installed" in output and "scripts/install_engine.sh" in output
    assert "every engine has failed for good" in output


async def wait_until(condition: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_a_failed_engine_never_blocks_draining_the_healthy_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "model").mkdir()
    no_vllm = Deployment("needs-vllm", EngineSpec(), str(tmp_path / "model"), sys.executable,
                         tmp_path)  # fmt: skip
    # A name the config would refuse: the slot's unexpected error must fail it, not hang.
    escaping = Deployment("../escape", EngineSpec(kind="stub"), "unused", sys.executable,
                          tmp_path)  # fmt: skip
    healthy = Deployment(STUB, EngineSpec(kind="stub", health={"drain_timeout_s": 10}),
                         "unused", sys.executable, tmp_path)  # fmt: skip
    registry = InProcessRegistry()
    supervisor = EngineSupervisor([no_vllm, escaping, healthy], registry, lambda _: None)
    caplog.set_level(logging.ERROR, logger="vgate.engines")
    started = time.monotonic()
    await supervisor.start()
    broken, escaped, good = supervisor.slots
    try:
        await wait_until(lambda: broken.failed.is_set() and escaped.failed.is_set(), 15)
        assert time.monotonic() - started < 10, "a start that cannot succeed is known at once"
        assert broken.restarts == 0, "retrying cannot help: no restart budget spent"
        assert not await supervisor.wait_ready()
        assert not supervisor.all_failed()
        reported = [r.getMessage() for r in caplog.records if "needs-vllm" in r.getMessage()]
        assert any(
            "vLLM is not installed" in m and "scripts/install_engine.sh" in m for m in reported
        ), reported
        await wait_until(good.ready.is_set, 20)
        assert good.process is not None
        body = {
            "model": STUB,
            "messages": [{"role": "user", "content": "long"}],
            "stream": True,
            "stub": {"tokens": 10, "itl_ms": 100},
        }
        async with aiohttp.ClientSession() as session:
            url = f"{good.process.plan.url}/v1/chat/completions"
            headers = good.process.plan.auth_headers()  # managed engines demand their key
            async with session.post(url, json=body, headers=headers) as response:
                assert (await response.content.readline()).startswith(b"data: ")
                stopping = asyncio.create_task(supervisor.stop())
                await wait_until(lambda: good.record is not None
                                 and good.record.state == "draining", 5)  # fmt: skip
                rest = await response.content.read()
            await asyncio.wait_for(stopping, 30)
    finally:
        await supervisor.stop()
    assert rest.rstrip().endswith(b"data: [DONE]"), "the healthy engine was not drained"
    assert not good.process.alive
    assert await registry.records() == []


async def test_an_engine_exiting_while_starting_is_reported_and_given_up_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = EngineSpec(kind="stub", extra_args=("--no-such-flag",))
    supervisor = EngineSupervisor([Deployment(STUB, spec, "unused", sys.executable, tmp_path)],
                                  InProcessRegistry(), lambda _: None)  # fmt: skip
    caplog.set_level(logging.ERROR, logger="vgate.engines")
    await supervisor.start()
    try:
        assert not await asyncio.wait_for(supervisor.wait_ready(), 20)
        slot = supervisor.slots[0]
        assert slot.restarts == 0 and supervisor.all_failed()
        assert slot.problem is not None and slot.problem.permanent
        [line] = [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]
        assert slot.engine_id in line
        assert "rejected its command line: --no-such-flag" in line and "extra_args" in line
    finally:
        await supervisor.stop()


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


async def test_an_engine_gets_no_vgate_secret_and_a_private_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "admin-0123456789abcdef-do-not-leak"
    monkeypatch.setenv("VGATE_AUTH__ADMIN_KEY", secret)
    monkeypatch.setenv("VGATE_REDIS__URL", f"redis://:{secret}@127.0.0.1:1/0")
    monkeypatch.setenv("REDIS_PASSWORD", secret)
    logs = tmp_path / "logs"
    deployment = Deployment(STUB, EngineSpec(kind="stub"), "unused", sys.executable, logs)
    supervisor = EngineSupervisor([deployment], InProcessRegistry(), lambda _: None)
    await supervisor.start()
    try:
        assert await supervisor.wait_ready()
        process = supervisor.slots[0].process
        assert process is not None and process.pid is not None
        environ = environ_of(process.pid)
        names = [entry.split(b"=", 1)[0].decode() for entry in environ.split(b"\0") if entry]
        assert "PATH" in names
        assert [name for name in names if name.startswith("VGATE_")] == []
        assert secret.encode() not in environ
        log_file = process.plan.log_path
        assert log_file.parent == logs
        assert stat.S_IMODE(os.stat(logs).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(log_file).st_mode) == 0o600
    finally:
        await supervisor.stop()


async def test_a_full_disk_at_spawn_is_retried_not_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawn that failed for want of disk (the log's start line, ENOSPC), memory or
    process slots gave the replica up for good: the machine may have room a moment
    later, so it is retried within the restart budget like any failed start."""
    real_spawn = EngineProcess.spawn
    failures = [OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.log"))]

    def spawn_once_short_of_disk(process: EngineProcess) -> None:
        if failures:
            raise failures.pop()
        real_spawn(process)

    monkeypatch.setattr(EngineProcess, "spawn", spawn_once_short_of_disk)
    spec = EngineSpec(kind="stub", restart={"backoff_initial_s": 0.1})
    supervisor = EngineSupervisor([Deployment(STUB, spec, "unused", sys.executable, tmp_path)],
                                  InProcessRegistry(), lambda _: None)  # fmt: skip
    await supervisor.start()
    try:
        slot = supervisor.slots[0]
        await wait_until(lambda: slot.ready.is_set() or slot.failed.is_set(), 30)
        assert slot.ready.is_set() and not slot.failed.is_set(), slot.problem
        assert slot.restarts == 1 and not failures
    finally:
        await supervisor.stop()
