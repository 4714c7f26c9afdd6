"""Bounded shutdown: close steps run newest first, each under a deadline, and none can
hold the others (or the process) forever."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.shutdown import EXIT_CODE, ShutdownSteps, exit_watchdog

LOGGER = "vgate.shutdown"


class Recorder:
    """Close steps that record their order; ``stuck`` ones wait forever."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def step(
        self, name: str, *, stuck: bool = False, fails: bool = False
    ) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            self.order.append(name)
            if fails:
                raise RuntimeError(f"{name} broke")
            if stuck:
                await asyncio.Event().wait()

        return close


async def test_steps_run_newest_first_and_a_stuck_or_failing_one_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    recorder = Recorder()
    steps = ShutdownSteps(budget_s=1.0, step_s=0.2)
    steps.push_async_callback(recorder.step("upstream"), name="upstream")
    steps.push_async_callback(recorder.step("redis", stuck=True), name="redis")
    steps.push_async_callback(recorder.step("broken", fails=True), name="broken")
    cancelled: list[bool] = []
    steps.callback(lambda: cancelled.append(True), name="announce")
    started = time.monotonic()
    await asyncio.wait_for(steps.aclose(), 5)
    assert time.monotonic() - started < 0.5  # the stuck step got its 0.2 s, no more
    assert recorder.order == ["broken", "redis", "upstream"]
    assert cancelled == [True]
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("redis did not finish in 0.2 s; skipped" in m for m in messages)
    assert any("broken failed; skipped" in m for m in messages)


async def test_steps_share_one_budget_but_each_still_starts() -> None:
    recorder = Recorder()
    steps = ShutdownSteps(budget_s=0.3, step_s=0.2, min_step_s=0.01)
    for name in ("a", "b", "c", "d"):
        steps.push_async_callback(recorder.step(name, stuck=True), name=name)
    assert steps.bound_s() == pytest.approx(0.3 + 4 * 0.01)
    started = time.monotonic()
    await asyncio.wait_for(steps.aclose(), 5)
    elapsed = time.monotonic() - started
    assert recorder.order == ["d", "c", "b", "a"]  # every step was given its chance
    assert 0.3 <= elapsed < 0.3 + 4 * 0.01 + 0.2, elapsed  # 0.2 + 0.1 + 0.01 + 0.01


async def test_a_step_with_its_own_deadline_is_outside_the_budget() -> None:
    recorder = Recorder()
    steps = ShutdownSteps(budget_s=0.1, step_s=0.1, min_step_s=0.01)
    steps.push_async_callback(recorder.step("after"), name="after")
    steps.push_async_callback(recorder.step("engines", stuck=True), timeout_s=0.3)
    assert steps.bound_s() == pytest.approx(0.3 + 0.1 + 0.01)
    started = time.monotonic()
    await asyncio.wait_for(steps.aclose(), 5)
    assert 0.3 <= time.monotonic() - started < 0.6
    assert recorder.order == ["engines", "after"]


async def test_a_step_that_swallows_its_cancellation_still_ends_at_its_deadline() -> None:
    """The pattern that makes a stop() wait forever: suppressing CancelledError around
    an await. asyncio.timeout interrupts the await itself, once."""
    swallowed: list[bool] = []

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.append(True)  # returns normally: the deadline must not hang on it

    steps = ShutdownSteps(budget_s=0.2, step_s=0.2)
    steps.push_async_callback(stubborn, name="stubborn")
    await asyncio.wait_for(steps.aclose(), 5)
    assert swallowed == [True]


def test_step_names_default_to_their_owner() -> None:
    class Periodic:
        name = "registry-watch"

        async def stop(self) -> None:
            return None

    class Link:
        async def close(self) -> None:
            return None

    steps = ShutdownSteps()
    steps.push_async_callback(Periodic().stop)
    steps.push_async_callback(Link().close)
    assert [s.name for s in steps._steps] == ["Periodic(registry-watch).stop", "Link.close"]


def test_the_watchdog_ends_a_process_whose_shutdown_overruns() -> None:
    exited: list[int] = []
    called = threading.Event()

    def fake_exit(code: int) -> None:
        exited.append(code)
        called.set()

    with exit_watchdog(0.0, exit=fake_exit) as fired:
        assert called.wait(5), "the watchdog never fired"
    assert fired.is_set() and exited == [EXIT_CODE]


def test_the_watchdog_stays_quiet_when_shutdown_ends_in_time() -> None:
    exited: list[int] = []
    with exit_watchdog(0.0, exit=exited.append) as fired:
        pass  # well within the grace period
    deadline = time.monotonic() + 5
    while any(t.name == "vgate-exit-watchdog" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the watchdog thread outlived its block"
        time.sleep(0.01)
    assert not fired.is_set() and exited == []  # it ended without firing
