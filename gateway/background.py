"""Supervised background tasks: every periodic job of a gateway runs here, and none dies.

A gateway keeps several views current in the background; each is one *task*
that runs a *step* every ``interval_s`` seconds. Task names are stable (they are
metric labels and keys of ``/ready``'s detail):

* ``registry-watch``: engines published in the shared registry → the pool;
* ``key-refresh``: keys made or revoked elsewhere → the local key copy;
* ``lease-renewal``: concurrency leases of requests in flight extended;
* ``health-probe``: every engine's ``/health``;
* ``load-scrape``: every engine's ``/metrics`` (queue depth, KV cache).
* ``model-info``: every engine's ``/v1/models`` (max_model_len, root, parent),
  when it joins and every minute.

A step that raises anything but cancellation does not end its task: the
failure is logged with its traceback (the first of a streak, then at most once
per ``relog_s`` while the streak lasts), counted, and the step is retried after
a delay that doubles from ``interval_s`` with every consecutive failure, up to
``backoff_cap_s`` (or the interval, if longer); one success resets it. Only
:meth:`Periodic.stop` (cancellation, at shutdown) ends a task. Before this, one
unexpected exception (say a record written by a newer version) ended a loop for
good with no log line: a revoked key kept working, the engine view froze.

Steps that meet an *expected* outage (Redis down) handle it themselves, keep
their last view and log it through :class:`RepeatedLog` (the first failure, then
at most once a minute with a count); the runner is for everything else. Such a
step may then raise :class:`StepOutage` so that its health says so: the runner
counts it as a failed step with its message as the task's
:attr:`TaskHealth.problem`, logs nothing more (no traceback: it is expected) and
retries at the task's interval, without backing off, so that the task is current
again one interval after the outage ends.

:class:`BackgroundTasks` is the registry one app owns: it makes the tasks and
reports each one's :class:`TaskHealth` for metrics and ``/ready``. No module
state: two apps in one process have two registries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("vgate.background")

Step = Callable[[], Awaitable[None]]
Clock = Callable[[], float]

DEFAULT_BACKOFF_CAP_S = 10.0
"""Longest pause between retries of a failing step whose interval is shorter: long
enough that a persistent fault costs a few log lines a minute, short enough that
a task is back within seconds once the fault clears."""
DEFAULT_RELOG_S = 60.0
_MAX_DOUBLINGS = 32  # 2**32 times any interval is past every cap: no float overflow


class StepOutage(Exception):
    """Raised by a step that met an expected outage and handled it (kept its last view,
    logged it): a failed step, with this message as :attr:`TaskHealth.problem`."""


@dataclass(frozen=True, slots=True)
class TaskHealth:
    """One task as metrics and ``/ready`` see it."""

    last_success_age_s: float | None
    """Seconds since the step last completed; None if it never has."""
    failures: int
    """Consecutive failures now (0 once a step succeeds)."""
    errors: int
    """Failed steps since the task was made (a counter)."""
    problem: str | None = None
    """Why the last step failed (a :class:`StepOutage`'s message, or the exception's
    type and text); None once a step succeeds."""


class Periodic:
    """Runs ``step`` every ``interval_s`` seconds, surviving its failures, until stopped."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        step: Step,
        *,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        relog_s: float = DEFAULT_RELOG_S,
        clock: Clock = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"task {name}: interval_s must be positive, not {interval_s}")
        self.name = name
        self._interval_s = interval_s
        self._step = step
        self._cap_s = max(backoff_cap_s, interval_s)
        self._relog_s = relog_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._last_success: float | None = None
        self._last_logged: float | None = None
        self._failures = 0
        self._errors = 0
        self._problem: str | None = None

    async def start(self, *, run_first: bool = False) -> None:
        """Schedule the loop (it sleeps first). With ``run_first``, one guarded step
        runs now, before returning: start-up gets a first view, or a logged failure
        and a retry, never an exception."""
        if self._task is not None:
            raise RuntimeError(f"task {self.name} is already running")
        delay = self._interval_s
        if run_first:
            delay = await self._guarded_step()
        self._task = asyncio.create_task(self._run(delay), name=f"vgate-{self.name}")

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end (a step in progress is cancelled).

        If ``stop`` is itself cancelled while it waits (a shutdown deadline), that
        cancellation propagates: the loop's own end is awaited with
        :func:`asyncio.wait`, which never swallows the caller's cancellation."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait((task,))

    def health(self) -> TaskHealth:
        age = None if self._last_success is None else self._clock() - self._last_success
        return TaskHealth(age, self._failures, self._errors, self._problem)

    async def _run(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            delay = await self._guarded_step()

    async def _guarded_step(self) -> float:
        """One step; returns the pause before the next. Cancellation (a BaseException)
        passes through: it is how a task ends."""
        try:
            await self._step()
        except StepOutage as outage:  # handled and logged by the step itself
            self._failures += 1
            self._errors += 1
            self._problem = str(outage)
            return self._interval_s
        except Exception as exc:
            return self._failed(exc)
        if self._failures:
            log.info("background task %s recovered after %d failures", self.name, self._failures)
        self._failures = 0
        self._problem = None
        self._last_success = self._clock()
        return self._interval_s

    def _failed(self, exc: Exception) -> float:
        self._failures += 1
        self._errors += 1
        self._problem = f"{type(exc).__name__}: {exc}"
        doublings = min(self._failures - 1, _MAX_DOUBLINGS)
        delay = min(self._cap_s, self._interval_s * 2.0**doublings)
        now = self._clock()
        if (
            self._failures == 1
            or self._last_logged is None
            or now - self._last_logged >= self._relog_s
        ):
            self._last_logged = now
            log.exception(
                "background task %s failed (%d in a row); retrying in %.3g s",
                self.name, self._failures, delay,
            )  # fmt: skip
        return delay


class BackgroundTasks:
    """Every periodic task of one app, made here so that their health is read in one place.

    The composition root adds each task and pushes its :meth:`Periodic.stop` on
    its exit stack (so each stops before what it uses is closed)."""

    def __init__(
        self,
        *,
        backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S,
        relog_s: float = DEFAULT_RELOG_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._backoff_cap_s = backoff_cap_s
        self._relog_s = relog_s
        self._clock = clock
        self._tasks: dict[str, Periodic] = {}

    def add(self, name: str, interval_s: float, step: Step) -> Periodic:
        """A new task called ``name`` (unique in this registry), not started yet."""
        if name in self._tasks:
            raise ValueError(f"a background task called {name!r} exists already")
        task = Periodic(
            name, interval_s, step,
            backoff_cap_s=self._backoff_cap_s, relog_s=self._relog_s, clock=self._clock,
        )  # fmt: skip
        self._tasks[name] = task
        return task

    async def start(
        self, name: str, interval_s: float, step: Step, *, run_first: bool = False
    ) -> Periodic:
        """:meth:`add` then :meth:`Periodic.start`; the caller stops it."""
        task = self.add(name, interval_s, step)
        await task.start(run_first=run_first)
        return task

    def snapshot(self) -> dict[str, TaskHealth]:
        """Every task's health now, by name (read at scrape and ``/ready`` time)."""
        return {name: task.health() for name, task in self._tasks.items()}


class RepeatedLog:
    """Warnings about an outage that a step meets every tick, without one line per tick.

    :meth:`failed` logs the first failure of a streak at once. Each message seen
    again in the same streak is only counted, and logged at most once per
    ``relog_s`` with how many there were since ("... (N more since)"); a message not
    seen yet is logged at once (a new kind of trouble), up to ``max_kinds`` kinds
    per streak, after which new ones share one allowance (errors that name a
    changing detail cannot bring back one line per tick). :meth:`recovered` ends
    the streak, with one line saying how many failures it had. Before this, the
    registry watcher logged the same Redis error every 0.5 s for as long as Redis
    was down (1,877 lines in one incident).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        relog_s: float = DEFAULT_RELOG_S,
        max_kinds: int = 8,
        clock: Clock = time.monotonic,
    ) -> None:
        self._log = logger
        self._relog_s = relog_s
        self._max_kinds = max_kinds
        self._clock = clock
        self._kinds: dict[str, _Seen] = {}  # per message (or _OTHERS): when logged, since
        self.streak = 0
        """Failures since the last :meth:`recovered` (0: none)."""

    def failed(self, message: str) -> None:
        """One more failure; ``message`` is logged, or counted (see the class docstring)."""
        self.streak += 1
        now = self._clock()
        kind = message
        if kind not in self._kinds and len(self._kinds) >= self._max_kinds:
            kind = _OTHERS
        seen = self._kinds.get(kind)
        if seen is None:
            self._kinds[kind] = _Seen(now)
            self._log.warning("%s", message)
        elif now - seen.logged_at >= self._relog_s:
            self._log.warning("%s (%d more since)", message, seen.unlogged + 1)
            seen.logged_at, seen.unlogged = now, 0
        else:
            seen.unlogged += 1

    def recovered(self, message: str) -> None:
        """The step succeeded: if a streak was running, log ``message`` with its length."""
        if self.streak:
            self._log.warning("%s after %d failures", message, self.streak)
        self.streak = 0
        self._kinds.clear()


_OTHERS = "\0others"  # RepeatedLog's shared kind once max_kinds is reached


@dataclass(slots=True)
class _Seen:
    logged_at: float
    unlogged: int = 0
