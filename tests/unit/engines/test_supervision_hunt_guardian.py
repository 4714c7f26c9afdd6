"""An engine never outlives vgate: the guardian, when vgate's end of its pipe closes,
ends the engine process groups still listed (SIGTERM, then SIGKILL after its grace) and
leaves forgotten ones; and a child whose parent died before it asked for the
parent-death signal ends itself."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from engines.guardian import EngineGuardian, end_groups
from engines.process import die_with_parent
from tests.helpers.waiting import holds_soon

IGNORES_SIGTERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
OBEYS_SIGTERM = "import time; print('ready', flush=True); time.sleep(60)"


def spawn(code: str) -> subprocess.Popen[bytes]:
    """A process group of its own, returned once its code runs (signal handler set)."""
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


async def test_a_closed_pipe_kills_listed_groups_and_spares_forgotten_ones() -> None:
    guardian = EngineGuardian(grace_s=0.3)
    stubborn, forgotten = spawn(IGNORES_SIGTERM), spawn(IGNORES_SIGTERM)
    try:
        guardian.watch(stubborn.pid)
        guardian.watch(forgotten.pid)
        guardian.forget(forgotten.pid)
        started = time.monotonic()
        await guardian.close()  # as when vgate dies: the pipe ends
        holds_soon(lambda: stubborn.poll() is not None, 5, "the stubborn engine lived on")
        assert stubborn.returncode == -signal.SIGKILL
        assert time.monotonic() - started >= 0.3  # it had its grace after SIGTERM
        assert forgotten.poll() is None
    finally:
        for child in (stubborn, forgotten):
            child.kill()
            child.wait()


def test_a_group_that_obeys_sigterm_is_not_killed() -> None:
    child = spawn(OBEYS_SIGTERM)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # the child is ours: reaped here meanwhile
            ending = pool.submit(end_groups, {child.pid}, 5)
            assert child.wait(timeout=5) == -signal.SIGTERM
            assert ending.result(timeout=5) == []
        assert time.monotonic() - started < 5
    finally:
        child.kill()
        child.wait()


def test_a_child_whose_parent_died_before_prctl_ends_itself() -> None:
    """The parent-death signal is set in the child after the fork: a parent gone by then
    sends none. The child sees that its parent is not the one that forked it."""
    not_my_parent = os.getpid()  # the child's parent is this process: pretend another
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        preexec_fn=functools.partial(die_with_parent, not_my_parent + 10**6),
    )
    try:
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()


def test_a_child_whose_parent_lives_runs() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "print('ran')"],
        stdout=subprocess.PIPE,
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
    )
    assert child.communicate(timeout=10)[0] == b"ran\n"
    assert child.returncode == 0
