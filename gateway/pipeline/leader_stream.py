"""A single-flight leader's stream: the engine read at the engine's pace once someone
follows, whatever pace the leader's own client takes it at.

Without followers the leader's client pulls the engine's events itself, as any
stream's client does (no task, no queue: :meth:`LeaderStream.__anext__` hands out the
relay's own step). A client that takes its bytes slowly then slows only itself. But
followers receive what the leader publishes (:mod:`gateway.cache.singleflight`), so
once one joins (:attr:`Flight.on_readers`) a task, the pump, takes over reading the
engine: each batch goes into the flight (the cache fill's tap) and into the leader's
own queue (its events as its client gets them: its id, its usage event only if asked),
which its client takes at its own pace. A leader whose queue grows past the flight's
``max_lag_bytes`` (``cache.max_lag_bytes``) while anyone follows is cut: its queue is
dropped, no more is queued for it, and its stream ends with :class:`SlowReaderError`
while the followers go on. The gateway then stops waiting on that client: its stream
counts as ended (:meth:`LeaderStream.close`: the engine request lives on only while
followers read, and the request's resources are released when the pump ends, not
when the client's writes do), and ``on_cut`` is told, which counts the cut and asks
the HTTP edge to hang up on a client that is taking no bytes
(:class:`gateway.pipeline.results.ClientLine`). Before, a cut leader whose client
never read again held its engine slot, its concurrency slot and its connection until
the send deadline (``server.send_timeout_s``) reset it. A client still reading gets
the error event when it comes back for more. Once nobody follows any more the leader
paces nobody: the pump then waits for its client to take its queue, as a stream
nobody follows waits for its client, and is cut only if someone joins meanwhile.

The pump takes over only while the leader's client is not itself inside the relay
(between two of its steps, or blocked writing); a follower that joins while it is
waits for that step to end (the batch it brings is published, or the client comes
back for the next one), since one async generator has one reader at a time.

The engine request lives while anyone reads it: when the leader's client leaves (or
is cut) while the pump reads for followers, the pump goes on, and it is cancelled
once the last follower leaves. The request's resources (engine slot, ticket, the
fill) are released once both the leader's stream and the pump have ended. A leader
whose client leaves before the pump took over ends as before: its followers that
have received nothing make their own call, those already streaming get an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import AsyncGeneratorType
from typing import cast

from gateway.cache.singleflight import Flight
from gateway.errors import GatewayError, UpstreamError
from gateway.pipeline.cache_flow import CacheFill, slow_reader

log = logging.getLogger("vgate.app")


class LeaderStream:
    """The leader's client's events (an async iterator), and its ``close``."""

    __slots__ = (
        "_changed",
        "_close_request",
        "_cut",
        "_ended",
        "_error",
        "_feeding",
        "_fill",
        "_flight",
        "_on_cut",
        "_open",
        "_pump",
        "_pumping",
        "_queue",
        "_queued",
        "_relay",
        "_room",
    )

    def __init__(
        self,
        relay: AsyncGenerator[bytes, None],
        fill: CacheFill,
        close: Callable[[], None],
        on_cut: Callable[[], None] | None = None,
    ) -> None:
        """``close`` releases the request; ``on_cut`` is told once if the leader's client
        is cut for falling behind its followers."""
        # (a generator: whether a step of it is under way is its ``ag_running``)
        self._relay = cast("AsyncGeneratorType[bytes, None]", relay)
        self._fill = fill
        self._flight: Flight = fill.flight
        self._close_request = close
        self._on_cut = on_cut
        self._pump: asyncio.Task[None] | None = None
        self._pumping = False  # the pump reads the engine (took over from the client)
        self._queue: list[bytes] = []
        self._queued = 0  # bytes in the queue
        self._feeding = True  # the pump queues for the leader's client (not cut, not gone)
        self._cut = False
        self._open = True  # the leader's stream has not ended (its close not called)
        self._ended = False  # the pump has read the engine to the end (or failed)
        self._error: GatewayError | None = None  # how the engine's stream failed
        self._changed: asyncio.Event | None = None  # for the leader's client
        self._room: asyncio.Event | None = None  # for the pump, waiting for that client
        self._flight.on_readers = self._readers_changed
        if self._flight.followers:  # joined while the engine was asked
            self._readers_changed()

    def __aiter__(self) -> LeaderStream:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        if self._pump is None:
            return self._relay.__anext__()  # nobody follows: the client pulls the engine
        return self._next_queued()

    def close(self) -> None:
        """The leader's stream ended (answered, cut, or its client left): the request is
        released now unless the pump reads on for followers (then when it ends)."""
        if not self._open:
            return
        self._open = False
        self._feeding = False
        self._queue.clear()
        self._make_room()
        pump = self._pump
        if pump is None or pump.done():
            self._release()
        elif not self._pumping or not self._flight.followers:
            pump.cancel()  # its end releases the request
            if not self._pumping:  # not reading the engine yet: released as before
                self._release()

    def _readers_changed(self) -> None:
        flight = self._flight
        if flight.followers > 0:
            if self._pump is None and self._open and not flight.done:
                self._pump = asyncio.get_running_loop().create_task(self._run_pump())
            self._make_room()  # a pump waiting for the leader's client paces someone now
        elif not self._open and self._pump is not None:
            self._pump.cancel()  # nobody reads the engine's answer any more

    async def _run_pump(self) -> None:
        relay, flight = self._relay, self._flight
        try:
            while relay.ag_running:  # the client is inside a step of its own: its end is
                if flight.done:  # a publish, or the client back for more
                    return  # that step brings the last of it (or the failure) to the client
                await flight.wait(flight.end)
            self._pumping = True
            async for batch in relay:
                if self._feeding:
                    self._queue.append(batch)
                    self._queued += len(batch)
                    self._wake()
                    if self._queued > flight.max_lag_bytes:
                        await self._behind()
        except GatewayError as exc:
            self._error = exc
            self._fill.fail()  # the followers learn it now, not once the leader reads it
        except Exception:  # a bug: the leader and its followers get an error, not a hang
            log.exception("single-flight pump failed")
            self._error = UpstreamError("the engine answer could not be relayed")
            self._fill.fail()
        finally:
            self._ended = True
            self._wake()
            if not self._open and self._pumping:
                self._release()

    async def _behind(self) -> None:
        """The leader's client is more than ``max_lag_bytes`` behind the engine: cut it
        while anyone follows (it must not pace them); with nobody following any more,
        wait until it takes its queue, as a stream nobody follows waits for its client."""
        flight = self._flight
        while self._feeding and self._queued > flight.max_lag_bytes:
            if flight.followers:
                self._cut = True
                self._queued = 0
                self.close()  # stop waiting on its client (the pump reads on for them)
                self._wake()
                if self._on_cut is not None:
                    self._on_cut()
                return
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()

    def _make_room(self) -> None:
        """Wake a pump waiting for the leader's client (:meth:`_behind`) to look again."""
        room, self._room = self._room, None
        if room is not None:
            room.set()

    async def _next_queued(self) -> bytes:
        while True:
            queue = self._queue
            if queue:
                out = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                self._queued = 0
                self._make_room()
                return out
            if self._cut:
                raise slow_reader(self._flight)
            if self._ended:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopAsyncIteration
            if not self._pumping:
                self._flight.wake()  # the client is out of the relay: the pump may take over
            await self._next_change().wait()

    def _release(self) -> None:
        self._flight.on_readers = None
        self._close_request()

    def _next_change(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
