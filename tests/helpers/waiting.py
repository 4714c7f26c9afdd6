"""Waiting on a condition, not a clock: tests that wait this way do not flake on a
loaded machine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait (yielding to the loop) until ``condition`` holds; fail after ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


def holds_soon(
    condition: Callable[[], bool], within_s: float = 10.0, message: str = "the condition never held"
) -> None:
    """Poll (blocking, for tests outside a loop) until ``condition`` holds; fail after
    ``within_s`` with ``message``."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)
