"""Single flight: identical cache misses in flight at once cost one upstream call.

The first request for a key leads: it goes to the engine as usual and publishes
what it receives into a :class:`Flight`: a stream's batches of events as they
arrive, then the finished :class:`Entry`. Requests with the same key that arrive
meanwhile follow: they wait on the flight instead of calling an engine, and a
streaming follower receives each batch as the leader does, under its own answer
id (:class:`gateway.cache.entry.IdSwap`). Scope: one gateway
process (each replica leads its own flights; Redis is not consulted). If the
leader fails or its client leaves mid-answer, followers that have sent nothing
yet make their own upstream call; those already streaming get an error event.
"""

from __future__ import annotations

import asyncio

from gateway.cache.entry import Entry


class FlightFailed(Exception):
    """The leader's answer did not complete."""


class Flight:
    """What a leader has received so far for one cache key."""

    def __init__(self) -> None:
        self.batches: list[bytes] = []
        """The leader's stream so far, as relayed (events, never split)."""
        self.answer_id: str | None = None
        """The id of the leader's stream, once its first batch arrived."""
        self.entry: Entry | None = None
        self.failed = False
        self.followers = 0
        self._changed: asyncio.Event | None = None
        """Set at the next change; made only once someone waits (most flights never
        have a follower, and a stream changes at every batch)."""

    @property
    def done(self) -> bool:
        return self.entry is not None or self.failed

    def leave(self) -> None:
        """One follower fewer (it got its answer, went its own way, or its client left)."""
        self.followers -= 1

    def publish(self, batch: bytes) -> None:
        if batch:
            self.batches.append(batch)
            self._wake()

    def finish(self, entry: Entry) -> None:
        self.entry = entry
        self._wake()

    def fail(self) -> None:
        if not self.done:
            self.failed = True
            self._wake()

    async def wait(self, seen: int) -> None:
        """Return once there are more than ``seen`` batches, or the flight is over."""
        while len(self.batches) <= seen and not self.done:
            await self._next_change().wait()

    async def result(self) -> Entry:
        while not self.done:
            await self._next_change().wait()
        if self.entry is None:
            raise FlightFailed
        return self.entry

    def _next_change(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


class Flights:
    """The flights of one process, by cache key."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        """Flights under way."""
        return len(self._flights)

    def under_way(self) -> list[Flight]:
        return list(self._flights.values())

    def join(self, key: str) -> Flight | None:
        """The flight under way for ``key`` (now one follower more), or None."""
        flight = self._flights.get(key)
        if flight is None or flight.done:
            return None
        flight.followers += 1
        return flight

    def lead(self, key: str) -> Flight:
        flight = self._flights[key] = Flight()
        return flight

    def land(self, key: str, flight: Flight) -> None:
        """Forget a finished flight (new requests go to the cache from now on)."""
        if self._flights.get(key) is flight:
            del self._flights[key]
