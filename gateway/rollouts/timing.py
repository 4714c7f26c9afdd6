"""Inter-token latency of a rollout's streams, measured as the stream is relayed.

vLLM sends one event per generated token (per choice), so the mean gap between the
first and the last event a stream relays is its inter-token latency as the client
sees it. The tap is added to rollout streams only: other streams pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable

_EVENT_END = b"\n\n"


class EventTiming:
    """A stream tap (``inspect``) noting when events arrive and how many."""

    __slots__ = ("_clock", "events", "first_at", "last_at")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.events = 0

    def inspect(self, batch: bytes) -> bytes:
        now = self._clock()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        self.events += batch.count(_EVENT_END)
        return batch

    def mean_gap_s(self) -> float | None:
        """Mean time between events after the first (None: fewer than two events, or
        all of them in one batch, where no gap was seen)."""
        if self.first_at is None or self.last_at is None or self.events < 2:
            return None
        span = self.last_at - self.first_at
        if span <= 0:
            return None
        return span / (self.events - 1)
