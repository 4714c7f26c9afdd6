"""The background-task runner: a failing step is logged, counted and retried with backoff,
the task survives it, and only stop() (cancellation) ends it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from gateway.background import BackgroundTasks, Periodic, StepOutage

LOGGER = "vgate.background"


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Step:
    """A step that fails its first ``failures`` calls, then succeeds; counts its calls."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"injected failure {self.calls}")


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]


async def test_a_failing_step_is_logged_counted_retried_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    step = Step(failures=2)
    task = Periodic("flaky", 0.01, step)
    await task.start()
    try:
        await wait_until(lambda: step.calls >= 4)  # two failures, then steps keep coming
    finally:
        await task.stop()
    health = task.health()
    assert health.errors == 2 and health.failures == 0
    assert health.last_success_age_s is not None and health.last_success_age_s >= 0
    [logged] = failure_records(caplog)  # one traceback per failure streak
    assert logged.exc_info is not None and "injected failure 1" in str(logged.exc_info[1])
    assert "flaky" in logged.getMessage()
    assert any("recovered after 2 failures" in r.getMessage() for r in caplog.records)


async def test_retries_back_off_exponentially_up_to_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    step = Step(failures=1000)
    task = Periodic("broken", 0.001, step, backoff_cap_s=0.008, relog_s=0.0)  # log every failure
    await task.start()
    try:
        await wait_until(lambda: step.calls >= 6)
    finally:
        await task.stop()
    delays = [record.args[2] for record in failure_records(caplog)[:6]]  # type: ignore[index]
    assert delays == [0.001, 0.002, 0.004, 0.008, 0.008, 0.008]
    assert task.health().failures == step.calls


async def test_a_long_streak_is_logged_at_most_once_per_relog_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    now = [0.0]
    logged_before = []  # failure lines when the clock passes relog_s (at the 4th call)
    calls = [0]

    async def step() -> None:  # the clock moves inside the step: no race with the loop
        calls[0] += 1
        if calls[0] == 4:
            logged_before.append(len(failure_records(caplog)))
            now[0] = 61.0
        if calls[0] <= 5:
            raise RuntimeError(f"injected failure {calls[0]}")

    task = Periodic("quiet", 0.001, step, backoff_cap_s=0.001, relog_s=60.0, clock=lambda: now[0])
    await task.start()
    try:
        await wait_until(lambda: calls[0] >= 6)
    finally:
        await task.stop()
    assert logged_before == [1]  # three failures within relog_s: one line
    assert len(failure_records(caplog)) == 2  # once more after relog_s, not at the 5th
    assert task.health().errors == 5


async def test_success_resets_the_backoff_and_a_new_streak_logs_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    outcomes = iter([False, True, False])  # fail, succeed, fail, then succeed forever
    calls = [0]

    async def step() -> None:
        calls[0] += 1
        if not next(outcomes, True):
            raise RuntimeError("injected")

    task = Periodic("streaks", 0.001, step, relog_s=3600.0)
    await task.start()
    try:
        await wait_until(lambda: calls[0] >= 5)
    finally:
        await task.stop()
    assert len(failure_records(caplog)) == 2
    assert all(record.args[1] == 1 for record in failure_records(caplog))  # type: ignore[index]
    assert task.health().errors == 2 and task.health().failures == 0


async def test_stop_cancels_a_step_in_progress_and_ends_the_task() -> None:
    entered, released = asyncio.Event(), asyncio.Event()

    async def hangs() -> None:
        entered.set()
        await released.wait()

    task = Periodic("hangs", 0.001, hangs)
    await task.start()
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(task.stop(), 5)
    await task.stop()  # idempotent
    assert task.health().errors == 0  # cancellation is not a failure


async def test_run_first_runs_one_guarded_step_before_start_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, LOGGER)
    ok, failing = Step(), Step(failures=1)
    first = Periodic("ok", 3600, ok)
    second = Periodic("failing", 3600, failing)
    await first.start(run_first=True)
    await second.start(run_first=True)  # raises nothing: start-up goes on
    try:
        assert ok.calls == 1 and first.health().last_success_age_s is not None
        assert failing.calls == 1 and second.health().last_success_age_s is None
        assert second.health().failures == 1 and len(failure_records(caplog)) == 1
    finally:
        await first.stop()
        await second.stop()


async def test_starting_twice_is_refused() -> None:
    task = Periodic("once", 3600, Step())
    await task.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await task.start()
    finally:
        await task.stop()


def test_an_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Periodic("zero", 0, Step())


async def test_the_registry_reports_every_task_and_refuses_duplicate_names() -> None:
    tasks = BackgroundTasks(backoff_cap_s=0.01)
    good = await tasks.start("good", 3600, Step(), run_first=True)
    bad = await tasks.start("bad", 3600, Step(failures=1), run_first=True)
    idle = tasks.add("idle", 3600, Step())
    try:
        with pytest.raises(ValueError, match="exists already"):
            tasks.add("good", 1, Step())
        snapshot = tasks.snapshot()
        assert set(snapshot) == {"good", "bad", "idle"}
        assert snapshot["good"].failures == 0 and snapshot["good"].last_success_age_s is not None
        assert snapshot["bad"].failures == 1 and snapshot["bad"].errors == 1
        assert snapshot["idle"].last_success_age_s is None and snapshot["idle"].errors == 0
    finally:
        for task in (good, bad, idle):
            await task.stop()


async def test_an_outage_the_step_handled_is_a_failure_with_its_reason_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A step raising :class:`StepOutage` (it kept its view and logged the outage) is
    counted as failing, its message the task's problem, retried at its interval (no
    backoff: 20 steps of 0.01 s come in well under the 10 s cap), and not logged."""
    caplog.set_level(logging.INFO, LOGGER)
    calls = 0

    async def outage() -> None:
        nonlocal calls
        calls += 1
        if calls <= 20:
            raise StepOutage(f"store unreadable ({calls})")

    task = Periodic("outage", 0.01, outage)
    await task.start(run_first=True)
    try:
        assert task.health().problem == "store unreadable (1)"
        await wait_until(lambda: calls >= 10, timeout=3.0)
        health = task.health()
        assert health.failures >= 9 and health.last_success_age_s is None
        assert health.problem is not None and health.problem.startswith("store unreadable")
        await wait_until(lambda: task.health().failures == 0, timeout=3.0)
    finally:
        await task.stop()
    assert task.health().problem is None and task.health().errors == 20
    assert failure_records(caplog) == []


async def test_an_unexpected_failure_is_the_tasks_problem_until_a_step_succeeds() -> None:
    step = Step(failures=1)
    task = Periodic("flaky", 0.01, step)
    await task.start(run_first=True)
    try:
        assert task.health().problem == "RuntimeError: injected failure 1"
        await wait_until(lambda: task.health().failures == 0)
        assert task.health().problem is None
    finally:
        await task.stop()
