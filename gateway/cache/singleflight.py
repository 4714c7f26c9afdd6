"""Single flight: identical cache misses in flight at once cost one upstream call.

The first request for a key leads: it goes to the engine as usual and publishes
what it receives into a :class:`Flight`: a stream's batches of events as they
arrive, then the finished :class:`Entry`. Requests with the same key that arrive
meanwhile follow: they wait on the flight instead of calling an engine, and a
streaming follower receives each batch as the leader does, under its own answer
id (:class:`gateway.cache.entry.IdSwap`). Scope: one gateway
process (each replica leads its own flights; Redis is not consulted). If the
leader fails, or its client leaves before the engine is read for its followers
(:mod:`gateway.pipeline.leader_stream`), followers that have sent nothing yet make
their own upstream call; those already streaming get an error event.

A stream that grows past the cache's ``max_entry_bytes`` will not be stored, so
its flight stops keeping it (:meth:`Flight.stop_keeping`): no new follower joins,
and each batch is forgotten once every follower has it. Without this, every
cacheable stream held its whole answer in memory until it ended, whatever its size.

Every reader takes the stream at its own pace (the leader's client too, once someone
follows: :mod:`gateway.pipeline.leader_stream`), so one that falls behind must not
hold the flight's memory: once a stream is no longer kept whole, a follower more than
:attr:`Flight.max_lag_bytes` behind the engine is cut (:attr:`Flight.cut`): its place
is dropped, the batches only it still needed are forgotten, and its stream ends with
an error event (:class:`gateway.errors.SlowReaderError`) while the others go on.
A follower cut while its client takes no bytes is hung up on at once
(:attr:`Flight.hang_ups`), as a cut leader is: its stream is blocked writing, so the
error event would reach it only once the send deadline reset its connection, which
held the connection and the request's slots until then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.cache.entry import Entry

MAX_LAG_BYTES = 2 * 1024 * 1024
"""``cache.max_lag_bytes``'s default: how far one reader of a shared stream may fall
behind the engine."""


class FlightFailed(Exception):
    """The leader's answer did not complete."""


class Flight:
    """What a leader has received so far for one cache key."""

    def __init__(self, max_lag_bytes: int = MAX_LAG_BYTES, cap: int | None = None) -> None:
        self.cap = cap
        """The output cap the gateway wrote into the leader's body where the key does not
        hold it (:attr:`gateway.cache.entry.Entry.cap`): only a request the gateway caps
        alike follows (the leader's answer may be cut by it, or longer than another's)."""
        self.batches: list[bytes] = []
        """The leader's stream so far, as relayed (events, never split), from batch
        :attr:`base` on."""
        self.base = 0
        """How many batches were forgotten from the front (see :meth:`stop_keeping`)."""
        self.keeping = True
        """Whether the whole stream is kept (for the cache, and for followers to come)."""
        self.positions: dict[object, int] = {}
        """How many batches each follower has had, by follower: from when it joins
        (:meth:`Flights.join`'s caller places it) until it leaves."""
        self.answer_id: str | None = None
        """The id of the leader's stream, once its first batch arrived."""
        self.entry: Entry | None = None
        self.failed = False
        self.followers = 0
        self.max_lag_bytes = max_lag_bytes
        """How far (bytes) a reader may fall behind the engine before it is cut."""
        self.held = 0
        """Bytes of :attr:`batches`, counted once the stream is no longer kept whole."""
        self.cut: set[object] = set()
        """Followers cut for falling more than :attr:`max_lag_bytes` behind (from
        :attr:`positions`, until they leave)."""
        self.hang_ups: dict[object, Callable[[], None]] = {}
        """How to stop waiting on each streaming follower's client, by follower (its
        :class:`gateway.pipeline.results.ClientLine`'s ``drop``): called when it is cut,
        forgotten when it leaves."""
        self.on_cut: Callable[[], None] | None = None
        """Told once for each follower cut (counted by the leader's request)."""
        self.on_readers: Callable[[], None] | None = None
        """Told when a follower joins or leaves (the leader's stream: it reads the engine
        at the engine's pace once someone follows, and stops once nobody reads)."""
        self._changed: asyncio.Event | None = None
        """Set at the next change; made only once someone waits (most flights never
        have a follower, and a stream changes at every batch)."""

    @property
    def done(self) -> bool:
        return self.entry is not None or self.failed

    @property
    def end(self) -> int:
        """How many batches were published."""
        return self.base + len(self.batches)

    def since(self, seen: int) -> list[bytes]:
        """The batches published after the first ``seen``; :class:`FlightFailed` if
        some of them were forgotten already (never a stream with a gap)."""
        if seen < self.base:
            raise FlightFailed
        return self.batches[seen - self.base :]

    def stop_keeping(self) -> None:
        """Keep batches only until every follower has them; let no new follower join."""
        self.keeping = False
        self.held = sum(map(len, self.batches))
        self._forget()
        self._cut_laggards()

    def leave(self, follower: object | None = None) -> None:
        """One follower fewer (it got its answer, went its own way, or its client left);
        ``follower``: the one whose place :attr:`positions` kept."""
        self.followers -= 1
        if follower is not None:
            if self.positions.pop(follower, None) is None:
                self.cut.discard(follower)
            if self.hang_ups:
                self.hang_ups.pop(follower, None)
        if self.on_readers is not None:
            self.on_readers()

    def publish(self, batch: bytes) -> None:
        if batch:
            self.batches.append(batch)
            if not self.keeping:
                self.held += len(batch)
                self._forget()
                if self.held > self.max_lag_bytes:
                    self._cut_laggards()
            self._wake()

    def _forget(self) -> None:
        """Drop the batches every follower has had. A follower that joined but has not
        started reading has no position yet: then nothing is dropped."""
        positions = self.positions
        if len(positions) + len(self.cut) < self.followers:
            return
        low = min(positions.values(), default=self.end)
        if low > self.base:
            dropped = low - self.base
            self.held -= sum(map(len, self.batches[:dropped]))
            del self.batches[:dropped]
            self.base = low

    def _cut_laggards(self) -> None:
        """Cut the followers furthest behind until what is held fits
        :attr:`max_lag_bytes` (their next read finds their batches forgotten)."""
        positions = self.positions
        if len(positions) + len(self.cut) < self.followers:
            return  # one that has not started reading holds everything: none is cut
        while self.held > self.max_lag_bytes and positions:
            low = min(positions.values())
            for follower in [f for f, seen in positions.items() if seen == low]:
                del positions[follower]
                self.cut.add(follower)
                if self.on_cut is not None:
                    self.on_cut()
                hang_up = self.hang_ups.pop(follower, None)
                if hang_up is not None:  # its client may be taking nothing: not waited on
                    hang_up()
            self._forget()

    def finish(self, entry: Entry) -> None:
        self.entry = entry
        self._wake()

    def fail(self) -> None:
        if not self.done:
            self.failed = True
            self._wake()

    async def wait(self, seen: int) -> None:
        """Return once there are more than ``seen`` batches, or the flight is over."""
        while self.end <= seen and not self.done:
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

    def wake(self) -> None:
        """Wake whoever waits on the flight (they look again at what changed)."""
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


class Flights:
    """The flights of one process, by cache key."""

    def __init__(self, max_lag_bytes: int = MAX_LAG_BYTES) -> None:
        self._flights: dict[str, Flight] = {}
        self._max_lag_bytes = max_lag_bytes

    def __len__(self) -> int:
        """Flights under way."""
        return len(self._flights)

    def under_way(self) -> list[Flight]:
        return list(self._flights.values())

    def join(self, key: str, cap: int | None = None) -> Flight | None:
        """The flight under way for ``key`` (now one follower more), or None; None too
        when its leader's :attr:`Flight.cap` is not ``cap``, this request's."""
        flight = self._flights.get(key)
        if flight is None or flight.done or not flight.keeping or flight.cap != cap:
            return None
        flight.followers += 1
        if flight.on_readers is not None:
            flight.on_readers()
        return flight

    def lead(self, key: str, cap: int | None = None) -> Flight:
        flight = self._flights[key] = Flight(self._max_lag_bytes, cap)
        return flight

    def land(self, key: str, flight: Flight) -> None:
        """Forget a finished flight (new requests go to the cache from now on)."""
        if self._flights.get(key) is flight:
            del self._flights[key]
