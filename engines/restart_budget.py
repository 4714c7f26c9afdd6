"""How many restarts a crashing engine replica gets: a sliding window, so that a replica
that crashes now and then is always restarted and one that crash-loops is given up;
and as many restarts, at most, after starts that failed in a row however long they
took: a start that hangs until ``startup_timeout_s`` (900 s by default) leaves at most
one restart in each 600 s window, so the window alone retried such an engine forever.

Apart from :mod:`engines.supervisor` (which spends it) so that it is tested alone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class RestartBudget:
    """At most ``limit`` restarts in any sliding window of ``window_s`` seconds, and at
    most ``limit`` in a row after failed starts (a successful start resets that count)."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._failed_starts = 0

    def take(self, after_failed_start: bool = False) -> bool:
        """Whether a restart is allowed now; ``after_failed_start``: the replica did not
        become ready since its last restart."""
        self._failed_starts = self._failed_starts + 1 if after_failed_start else 0
        if self._failed_starts > self._limit:
            return False
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
