"""The supervisor against engines that misbehave: one that hangs on start-up past its
timeout, every time, and one stopped with SIGSTOP.

* A start that hangs until ``startup_timeout_s`` was restarted forever: the budget is
  ``max_restarts`` in a sliding ``window_s``, and with the defaults (900 s to start,
  600 s window) a window never holds more than one such restart. Starts that fail in a
  row now spend the budget too, however long they took.
* A stopped engine (SIGSTOP: a debugger, a job-control mistake, a frozen cgroup) got
  SIGTERM, which a stopped process acts on only once continued: every stop of it
  waited ``stop_timeout_s`` and then killed it, with no chance to shut down cleanly.
  It now gets SIGCONT after the SIGTERM (from vgate, and from the guardian).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from engines.guardian import end_groups
from engines.process import EngineProcess, LaunchPlan
from engines.registry import InProcessRegistry
from engines.spec import EngineSpec
from engines.supervisor import Deployment, EngineSupervisor, RestartBudget
from tests.helpers.waiting import until

MODEL = "stub-model"
HANDLES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
    "print('rea' + 'dy', flush=True)\n"  # (the log's start line quotes this code)
    "while True: time.sleep(0.05)\n"
)


def test_failed_starts_in_a_row_spend_the_budget_whatever_the_window() -> None:
    now = [0.0]
    budget = RestartBudget(limit=2, window_s=10, clock=lambda: now[0])
    for _ in range(2):
        now[0] += 100  # each start hung longer than the window
        assert budget.take(after_failed_start=True)
    now[0] += 100
    assert not budget.take(after_failed_start=True)

    fresh = RestartBudget(limit=2, window_s=10, clock=lambda: now[0])
    for _ in range(5):  # a start that succeeded in between resets the count
        now[0] += 100
        assert fresh.take(after_failed_start=True)
        now[0] += 100
        assert fresh.take(after_failed_start=False)


async def test_an_engine_that_hangs_on_every_start_fails_for_good(tmp_path: Path) -> None:
    """The stub runs, but at an address nothing listens on (the advertised host): from
    the supervisor's side it never becomes ready, like a vLLM stuck loading."""
    spec = EngineSpec.model_validate(
        {
            "kind": "stub",
            "restart": {"max_restarts": 2, "window_s": 0.1, "backoff_initial_s": 0.05},
            "health": {"startup_timeout_s": 0.5, "stop_timeout_s": 2},
        }
    )
    deployment = Deployment(MODEL, spec, "unused", sys.executable, tmp_path, "127.0.0.2")
    messages: list[str] = []
    supervisor = EngineSupervisor([deployment], InProcessRegistry(), messages.append)
    await supervisor.start()
    try:
        slot = supervisor.slots[0]
        await until(slot.failed.is_set, 60)
        assert slot.restarts == 2
        assert "did not become ready in time" in messages[-1]
        assert "restart budget spent, giving up" in messages[-1]
    finally:
        await supervisor.stop()


def stopped_child() -> subprocess.Popen[bytes]:
    """A process group of its own that shuts down cleanly on SIGTERM (exit 7), stopped."""
    child = subprocess.Popen(
        [sys.executable, "-c", HANDLES_SIGTERM], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    os.kill(child.pid, signal.SIGSTOP)
    return child


async def test_a_stopped_engine_is_stopped_cleanly_not_killed_after_the_timeout(
    tmp_path: Path,
) -> None:
    plan = LaunchPlan(
        argv=(sys.executable, "-c", HANDLES_SIGTERM),
        env=dict(os.environ),
        url="http://127.0.0.1:1",
        served_name="m",
        log_path=tmp_path / "m-0.log",
    )
    process = EngineProcess(plan)
    process.spawn()
    try:
        await until(lambda: "\nready\n" in process.log_tail(), 10)
        assert process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
        started = time.monotonic()
        await process.stop(timeout_s=20)
        assert process.exit_code() == 7  # its SIGTERM handler ran: not SIGKILL (-9)
        assert time.monotonic() - started < 10
    finally:
        process.kill()


def test_the_guardian_lets_a_stopped_engine_act_on_sigterm() -> None:
    child = stopped_child()
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # the child is ours: reaped here meanwhile
            ending = pool.submit(end_groups, {child.pid}, 20)
            assert child.wait(timeout=20) == 7  # its SIGTERM handler ran: not SIGKILL
            assert ending.result(timeout=20) == []
        assert time.monotonic() - started < 10
    finally:
        child.kill()
        child.wait()


async def test_a_stopped_engine_is_found_dead_and_replaced(tmp_path: Path) -> None:
    """Liveness: SIGSTOP'd, the engine still holds its port (connections queue, nothing
    answers); /health fails three times in a row and it is replaced by a new one."""
    spec = EngineSpec.model_validate(
        {"kind": "stub", "health": {"interval_s": 0.1, "stop_timeout_s": 5}}
    )
    deployment = Deployment(MODEL, spec, "unused", sys.executable, tmp_path)
    messages: list[str] = []
    supervisor = EngineSupervisor([deployment], InProcessRegistry(), messages.append)
    await supervisor.start()
    try:
        assert await supervisor.wait_ready()
        slot = supervisor.slots[0]
        stopped = slot.process
        assert stopped is not None and stopped.pid is not None
        os.kill(stopped.pid, signal.SIGSTOP)
        await until(lambda: slot.restarts == 1 and slot.ready.is_set(), 60)
        assert any("stopped answering /health; restart 1" in m for m in messages)
        assert stopped.exit_code() is not None and slot.process is not stopped
    finally:
        await supervisor.stop()
