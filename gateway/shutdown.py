"""Bounded shutdown: the close steps of an app, each under its own deadline.

On SIGTERM uvicorn stops accepting, lets requests in progress finish for up to
``server.shutdown_timeout_s`` (its ``timeout_graceful_shutdown``), cancels the
rest, and only then runs the app's lifespan exit: :meth:`ShutdownSteps.aclose`.
Nothing there may wait forever, whatever state Redis, the engines or the clients
are in. Once, with Redis killed while hostile connections had been open, a
gateway stayed 18 minutes in "Waiting for application shutdown" until it was
killed by hand; the cause was not reproduced, so the fix is a bound, not a guess:

* every step runs under :func:`asyncio.timeout`; one that times out or raises is
  logged and skipped, and the next step runs;
* the steps share one budget (``budget_s``): each gets at most ``step_s``, and
  never more than what the steps before it left (but always ``min_step_s``, so
  that every step at least starts, cancelling its task or closing its socket);
* a step given a ``timeout_s`` of its own (draining managed engines, bounded by
  their own ``drain_timeout_s``) has that deadline instead, outside the budget;
* :func:`exit_watchdog` ends the process if the whole sequence overruns its bound
  anyway (an event loop blocked by a synchronous call, a step that swallows its
  cancellation): a process that exits late is better than one that never does.

So a gateway without managed engines is gone at most ``shutdown_timeout_s`` +
:data:`CLOSE_BUDGET_S` + the steps' minimums after SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("vgate.shutdown")

Clock = Callable[[], float]

CLOSE_BUDGET_S = 3.0
"""All close steps together (but those with a deadline of their own): closing a
socket or cancelling a task takes milliseconds, so this only runs out when
something is stuck."""
STEP_S = 2.0
"""The most one step may take out of the budget."""
MIN_STEP_S = 0.05
"""What a step gets even when the budget is spent."""
WATCHDOG_GRACE_S = 1.0
"""How long past the steps' bound :func:`exit_watchdog` waits before ending the process."""
EXIT_CODE = 70
"""The exit status when the watchdog ends the process (EX_SOFTWARE)."""


@dataclass(frozen=True, slots=True)
class _Step:
    name: str
    close: Callable[[], Awaitable[object]]
    timeout_s: float | None  # a deadline of its own, outside the budget


class ShutdownSteps:
    """Close steps, run last-in first-out by :meth:`aclose`, each under a deadline.

    Its ``push_async_callback`` and ``callback`` match :class:`contextlib.AsyncExitStack`
    (the composition root pushes each close right after building what it closes),
    with an optional name and deadline."""

    def __init__(
        self,
        *,
        budget_s: float = CLOSE_BUDGET_S,
        step_s: float = STEP_S,
        min_step_s: float = MIN_STEP_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._budget_s = budget_s
        self._step_s = step_s
        self._min_step_s = min_step_s
        self._clock = clock
        self._steps: list[_Step] = []

    def push_async_callback(
        self,
        close: Callable[[], Awaitable[object]],
        *,
        name: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Run ``close()`` at shutdown. ``timeout_s``: its own deadline, outside the
        shared budget (for a step whose length is configured, like draining engines)."""
        self._steps.append(_Step(name or _name_of(close), close, timeout_s))

    def callback(self, close: Callable[[], object], *, name: str | None = None) -> None:
        """Run the synchronous ``close()`` at shutdown (it cannot be interrupted: keep it
        short, like cancelling a task)."""

        async def run() -> None:
            close()

        self.push_async_callback(run, name=name or _name_of(close))

    def bound_s(self) -> float:
        """The longest :meth:`aclose` can take while the event loop runs."""
        own = sum(s.timeout_s for s in self._steps if s.timeout_s is not None)
        shared = sum(1 for s in self._steps if s.timeout_s is None)
        return own + self._budget_s + shared * self._min_step_s

    async def aclose(self) -> None:
        """Run every step, newest first; never raises (but cancellation), never waits
        past :meth:`bound_s`."""
        steps, self._steps = self._steps, []
        spent = 0.0
        for step in reversed(steps):
            if step.timeout_s is not None:
                await self._run(step, step.timeout_s)
                continue
            timeout = max(self._min_step_s, min(self._step_s, self._budget_s - spent))
            started = self._clock()
            await self._run(step, timeout)
            spent += self._clock() - started

    async def _run(self, step: _Step, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await step.close()
        except TimeoutError:
            log.error("shutdown: %s did not finish in %.3g s; skipped", step.name, timeout_s)
        except Exception:
            log.exception("shutdown: %s failed; skipped", step.name)


def _name_of(close: Callable[..., object]) -> str:
    """``Owner.method`` (with the owner's ``name`` when it has one: a task's), for logs."""
    owner = getattr(close, "__self__", None)
    method = getattr(close, "__name__", repr(close))
    if owner is None:
        return str(getattr(close, "__qualname__", method))
    label = getattr(owner, "name", None)
    kind = type(owner).__name__
    return f"{kind}({label}).{method}" if isinstance(label, str) else f"{kind}.{method}"


@contextmanager
def exit_watchdog(
    bound_s: float, *, exit: Callable[[int], object] = os._exit
) -> Iterator[threading.Event]:
    """End the process (``exit(EXIT_CODE)``) unless the ``with`` block ends within
    ``bound_s`` + :data:`WATCHDOG_GRACE_S` seconds.

    A thread, not a task: it fires even when the event loop is blocked. Only the
    lifespan's exit runs under it, so an app served inside a test process is never
    ended by it unless its shutdown is stuck anyway. Yields the event that is set
    when the watchdog fires (``exit`` is replaceable for tests)."""
    done = threading.Event()
    fired = threading.Event()
    limit = bound_s + WATCHDOG_GRACE_S

    def watch() -> None:
        if done.wait(limit):
            return
        fired.set()
        log.critical("shutdown still not done after %.3g s; exiting now", limit)
        for handler in logging.getLogger().handlers:
            handler.flush()
        exit(EXIT_CODE)

    thread = threading.Thread(target=watch, name="vgate-exit-watchdog", daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        done.set()
