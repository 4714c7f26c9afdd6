"""How many restarts a crashing engine replica gets: a sliding window, so that a replica
that crashes now and then is always restarted and one that crash-loops is given up.

Apart from :mod:`engines.supervisor` (which spends it) so that it is tested alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class RestartBudget:
    """At most ``limit`` restarts in any sliding window of ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def take(self) -> bool:
        now = self._clock()
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return False
        self._times.append(now)
        return True

    @property
    def used(self) -> int:
        return len(self._times)
