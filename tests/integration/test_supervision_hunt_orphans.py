"""A gateway killed with SIGKILL leaves no engine behind, even one that ignores SIGTERM.

The parent-death signal only sends the engine SIGTERM; an engine that does not go on
it (here a wrapper script that traps it, with the stub as its child, like vLLM stuck in
a long C call) stayed, holding its port and, in production, its GPU memory. The
guardian (engines/guardian.py) outlives the gateway and SIGKILLs the engine's process
group after ``stop_timeout_s``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

import engines.supervisor as supervisor_module
from engines.deployment import Deployment
from engines.guardian import EngineGuardian
from engines.registry import InProcessRegistry
from engines.spec import EngineSpec
from engines.supervisor import EngineSupervisor
from tests.helpers.processes import free_port, run_process
from tests.helpers.waiting import holds_soon

MODEL = "stubborn"
REPO = Path(__file__).resolve().parents[2]

# An "interpreter" for a vLLM engine: passes vgate's vLLM check, then runs the stub on
# the port and name vgate chose, under a shell that ignores SIGTERM.
STUBBORN_ENGINE = f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exit 0; fi
port=""; name=""
while [ $# -gt 0 ]; do
  case "$1" in --port) port="$2"; shift;; --served-model-name) name="$2"; shift;; esac
  shift
done
trap '' TERM
cd {REPO}
{sys.executable} -m engines.stub --port "$port" --model "$name" &
wait
"""


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def port_free(port: int) -> bool:
    """Whether a server could listen there now (as engines do, with SO_REUSEADDR: the
    connections of a killed one, in TIME_WAIT, do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_sigkilled_gateway_takes_a_stubborn_engine_with_it(tmp_path: Path) -> None:
    interpreter = tmp_path / "stubborn-python"
    interpreter.write_text(STUBBORN_ENGINE)
    interpreter.chmod(0o700)
    (tmp_path / "model").mkdir()
    health = {"interval_s": 0.2, "stop_timeout_s": 1, "drain_timeout_s": 1}
    admin_port, port = free_port(), free_port()
    config: dict[str, Any] = {
        "server": {"admin_port": admin_port},
        "engines": {"log_dir": str(tmp_path / "logs")},
        "models": [
            {
                "name": MODEL,
                "engine": {"kind": "vllm", "python": str(interpreter),
                           "source": str(tmp_path / "model"), "health": health},
            }
        ],
    }  # fmt: skip
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    engine_pid = None
    try:
        with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30) as gateway:
            ready_url = f"http://127.0.0.1:{admin_port}/ready"
            holds_soon(lambda: bool(httpx.get(ready_url).json()["engines"].get(MODEL)), 30)
            engine_url = next(iter(httpx.get(ready_url).json()["engines"][MODEL]))
            engine_pid = httpx.get(f"{engine_url}/stub/stats").json()["pid"]
            engine_port = int(engine_url.rsplit(":", 1)[1])

            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait()
            holds_soon(lambda: not pid_alive(engine_pid), 10, "the engine outlived the gateway")
            holds_soon(lambda: port_free(engine_port), 5, "the engine's port stayed taken")
    finally:
        if engine_pid is not None and pid_alive(engine_pid):  # the bug: end the orphans
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(engine_pid), signal.SIGKILL)


async def test_a_stop_kills_an_engine_that_ignores_sigterm(tmp_path: Path) -> None:
    """The clean stop escalates too: SIGTERM, then SIGKILL for the whole group after
    ``stop_timeout_s``; the port is free when :meth:`EngineSupervisor.stop` returns."""
    interpreter = tmp_path / "stubborn-python"
    interpreter.write_text(STUBBORN_ENGINE)
    interpreter.chmod(0o700)
    (tmp_path / "model").mkdir()
    health = {"interval_s": 0.2, "stop_timeout_s": 0.5, "drain_timeout_s": 0}
    spec = EngineSpec(kind="vllm", source=str(tmp_path / "model"), health=health)
    model = Deployment(MODEL, spec, str(tmp_path / "model"), str(interpreter), tmp_path)
    supervisor = EngineSupervisor([model], InProcessRegistry(), lambda _: None)
    await supervisor.start()
    try:
        assert await supervisor.wait_ready()
        process = supervisor.slots[0].process
        assert process is not None
        async with httpx.AsyncClient() as client:
            stats = await client.get(f"{process.plan.url}/stub/stats")
        engine_pid = stats.json()["pid"]
        engine_port = int(process.plan.url.rsplit(":", 1)[1])
    finally:
        await supervisor.stop()
    assert not pid_alive(engine_pid)
    assert port_free(engine_port)


async def test_engines_start_without_a_guardian_when_it_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The guardian is a last resort: failing to start it is logged, never fatal."""

    def cannot_run(grace_s: float) -> EngineGuardian:
        raise PermissionError(13, "Permission denied", sys.executable)

    monkeypatch.setattr(supervisor_module, "EngineGuardian", cannot_run)
    spec = EngineSpec(kind="stub")
    model = Deployment(MODEL, spec, "unused", sys.executable, tmp_path)
    supervisor = EngineSupervisor([model], InProcessRegistry(), lambda _: None)
    await supervisor.start()
    try:
        assert await supervisor.wait_ready()
    finally:
        await supervisor.stop()
    assert "no engine guardian" in caplog.text
