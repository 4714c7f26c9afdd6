"""Keep-alive connections to engines, pooled per origin, bounded in number.

A connection goes back to the pool only when its response was read to the end and
neither side asked to close (:meth:`EngineConnection.reusable`); anything else
(a stream the client abandoned, ``Connection: close``, a parse error, a timeout)
closes it, which is how an engine learns that nobody listens any more.

Idle connections are reused newest first and dropped after ``keepalive_s`` (timed
with ``time.monotonic``: on Python 3.11 every ``asyncio.get_running_loop()`` is a
``getpid`` system call, and these two run on every request). One
the engine closed while idle is skipped before anything is written to it: that is
the one retry that is always safe. A request written to a connection the engine
then closes without answering is not sent again here (a POST may have started a
generation); it surfaces as :class:`EngineUnreachable`, as it did with aiohttp, and
the forwarder decides.

Two bounds on connections open or opening at once: ``limit`` across all engines and
``per_origin`` to any one engine. The second is what keeps a hung engine (one that
takes requests and never answers, so every connection sent to it stays busy) from
filling the whole pool and starving the engines of every other model. A request
over the overall limit first closes an idle connection to another engine; a request
over its own engine's cap never does (nor takes another engine's share): it waits.

Waiting is bounded by ``connect_s``, the time a request may spend getting a
connection, waiting and connecting together; past it the request fails with
:class:`EngineUnreachable`, as for an engine that cannot be reached (the forwarder
then tries another engine of the model, or answers 503). Waiters queue per engine,
first come first served. A slot is handed to the waiter that can use it, never
just announced: a connection handed back reusable goes straight to a waiter for the
same engine; a slot freed by a close is reserved for the oldest waiter whose engine
is under its cap. A waiter that gives up (its deadline, or its request cancelled)
after it was handed something passes it on, so no wake-up is lost.

Health probes and metrics scrapes never wait (:meth:`ConnectionPool.connect` with
``wait=False``): an engine whose connections are all busy serving is not down, and a
probe that queued behind them would say so.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

from gateway.upstream.connection import EngineConnection
from gateway.upstream.target import Target
from gateway.upstream.transport import EngineBusy, EngineUnreachable

Origin = tuple[str, str, int]


class _Waiter:
    """A request waiting for room: handed a connection, or None (a reserved slot)."""

    def __init__(self, future: asyncio.Future[EngineConnection | None], order: int) -> None:
        self.future = future
        self.order = order
        """When it came (waiters of different engines are served oldest first)."""


class ConnectionPool:
    def __init__(self, limit: int, keepalive_s: float, per_origin: int | None = None) -> None:
        self._limit = limit
        self._per_origin = min(per_origin or limit, limit)
        self._keepalive_s = keepalive_s
        self._idle: dict[Origin, deque[EngineConnection]] = {}
        self._open: set[EngineConnection] = set()
        self._connecting = 0
        self._held: dict[Origin, int] = {}
        """Connections open, opening or reserved, per engine (engines with none absent)."""
        self._waiters: dict[Origin, deque[_Waiter]] = {}
        """Requests waiting for room, per engine (engines with none absent)."""
        self._arrivals = 0
        self._tls: ssl.SSLContext | None = None

    def take_idle(self, origin: Origin) -> EngineConnection | None:
        """The newest idle connection to ``origin`` still open and within
        ``keepalive_s``, or None. One the engine closed is skipped before anything
        was written to it."""
        idle = self._idle.get(origin)
        if idle:
            expired = time.monotonic() - self._keepalive_s
            while idle:
                conn = idle.pop()
                if conn.idle_since > expired and conn.open():
                    conn.busy = True
                    return conn
                conn.close()
                self._forget(conn)
        return None

    def held(self, origin: Origin) -> int:
        """Connections to ``origin`` open or opening now (for tests and diagnostics)."""
        return self._held.get(origin, 0)

    def waiting(self, origin: Origin) -> int:
        """Requests waiting for a connection to ``origin`` now (tests, diagnostics)."""
        return len(self._waiters.get(origin, ()))

    async def connect(
        self,
        target: Target,
        connect_s: float,
        *,
        wait: bool = True,
        wait_until: float | None = None,
    ) -> EngineConnection:
        """A connection to ``target``, waiting for room first if the limits say so
        (``wait=False``: at once, past the limits if need be); a new one, or one another
        request to the same engine handed back while this one waited.

        Waiting lasts at most ``connect_s`` (and ends by ``wait_until``, loop time, when
        given: the caller's own deadline, so that the wait ends as :class:`EngineBusy`
        before that deadline ends the request as the engine's timeout); then
        :class:`EngineBusy`. Connecting has ``connect_s`` of its own, counted from when
        the room came (a slot handed over just before the wait would have ended is no
        engine's fault); past it, :class:`EngineUnreachable`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        origin = target.origin
        if not wait:
            self._reserve(origin)
        else:
            deadline = start + connect_s
            if wait_until is not None and wait_until < deadline:
                deadline = wait_until
            waited = False
            while not self._room_for(origin):  # (which reserves the room if there is some)
                waited = True
                handed = await self._wait(loop, origin, deadline, deadline - start)
                if handed is None:
                    break  # a slot was reserved for this request
                if handed.open():
                    return handed
                self.release(handed)  # the engine closed it meanwhile: its slot goes on
            if waited:
                start = loop.time()
        return await self._connect(loop, target, start + connect_s, connect_s)

    def release(self, conn: EngineConnection) -> None:
        """Take back a connection whose request is over: handed to a request waiting for
        its engine, kept when reusable, else closed."""
        if not conn.busy:
            return  # already handed back
        reusable = conn.reusable()
        if reusable and (
            self._held.get(conn.origin, 0) > self._per_origin
            or len(self._open) + self._connecting > self._limit
        ):
            reusable = False  # opened past a limit (a probe's): closed, never reused
        if self._waiters and reusable:
            if self._hand_over(conn):
                return
            reusable = not self._someone_fits()  # else the slot goes to another engine
        conn.busy = False
        if not reusable:
            conn.close()
            self._forget(conn)
            return
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(conn.origin, deque())
        while idle and (idle[0].closed or idle[0].idle_since < conn.idle_since - self._keepalive_s):
            stale = idle.popleft()
            stale.close()
            self._forget(stale)
        idle.append(conn)

    def close(self) -> None:
        """Close every connection (the gateway is shutting down)."""
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        self._held.clear()

    # --- room ------------------------------------------------------------------------

    def _room_for(self, origin: Origin) -> bool:
        """Reserve a slot for a new connection to ``origin`` if the limits allow one now
        (closing an idle connection to another engine if only the overall limit is in
        the way) and nobody waits for it first."""
        if self._held.get(origin, 0) >= self._per_origin or origin in self._waiters:
            return False
        while len(self._open) + self._connecting >= self._limit:
            if self._someone_fits() or not self._close_an_idle():
                return False
        self._reserve(origin)
        return True

    def _reserve(self, origin: Origin) -> None:
        self._connecting += 1
        self._held[origin] = self._held.get(origin, 0) + 1

    def _unreserve(self, origin: Origin) -> None:
        """A reserved slot was not used (the connection failed, or its waiter left)."""
        self._connecting -= 1
        self._drop_held(origin)

    def _drop_held(self, origin: Origin) -> None:
        left = self._held.get(origin, 0) - 1
        if left > 0:
            self._held[origin] = left
        else:
            self._held.pop(origin, None)
        if self._waiters:
            self._hand_out_slots()

    # --- waiting ---------------------------------------------------------------------

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, origin: Origin, deadline: float, wait_s: float
    ) -> EngineConnection | None:
        """Wait until handed a connection (returned) or a reserved slot (None)."""
        future: asyncio.Future[EngineConnection | None] = loop.create_future()
        self._arrivals += 1
        waiter = _Waiter(future, self._arrivals)
        queue = self._waiters.get(origin)
        if queue is None:
            queue = self._waiters[origin] = deque()
        queue.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                handed = await future
        except TimeoutError:
            self._give_up(origin, waiter)
            raise EngineBusy(
                f"no free connection to the engine within {wait_s:.3g} s (connect_timeout_s, "
                f"or the request's deadline if sooner; {self._held.get(origin, 0)} open to "
                f"it, upstream.max_connections_per_engine "
                f"= {self._per_origin}; {len(self._open) + self._connecting} in all, "
                f"upstream.max_connections = {self._limit})"
            ) from None
        except BaseException:  # the request was cancelled
            self._give_up(origin, waiter)
            raise
        return handed

    def _give_up(self, origin: Origin, waiter: _Waiter) -> None:
        """``waiter`` stops waiting: out of its queue, or, if it was handed a connection
        or a slot as it gave up, that goes on to the next one."""
        queue = self._waiters.get(origin)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiters[origin]
            return
        future = waiter.future
        if future.done() and not future.cancelled():
            handed = future.result()
            if handed is None:
                self._unreserve(origin)
            else:
                self.release(handed)

    def _hand_over(self, conn: EngineConnection) -> bool:
        """Give a reusable ``conn`` (still busy) to the oldest request waiting for its
        engine, unless a request to another engine has waited longer for a slot."""
        origin = conn.origin
        queue = self._waiters.get(origin)
        if queue is None:
            return False
        while queue and queue[0].future.done():  # gave up, not yet out of the queue
            queue.popleft()
        if not queue:
            del self._waiters[origin]
            return False
        first = self._oldest_fitting()
        if first is not None and first != origin and self._waiters[first][0].order < queue[0].order:
            return False
        queue.popleft().future.set_result(conn)
        if not queue:
            del self._waiters[origin]
        return True

    def _oldest_fitting(self) -> Origin | None:
        """The engine whose oldest waiter came first among engines under their cap."""
        best: Origin | None = None
        best_order = 0
        for origin, queue in self._waiters.items():
            if queue and self._held.get(origin, 0) < self._per_origin:
                order = queue[0].order
                if best is None or order < best_order:
                    best, best_order = origin, order
        return best

    def _someone_fits(self) -> bool:
        """Some request waits for an engine under its cap (so only the overall limit
        keeps it waiting)."""
        return self._oldest_fitting() is not None

    def _hand_out_slots(self) -> None:
        """Reserve free slots for the oldest waiters that can use them, closing idle
        connections to make room when only the overall limit is in the way (a probe's,
        opened past the limit and kept idle, would otherwise hold it)."""
        while (origin := self._oldest_fitting()) is not None:
            if len(self._open) + self._connecting >= self._limit:
                if not self._close_an_idle():
                    return
                continue  # (closing it may have handed its slot out already)
            queue = self._waiters[origin]
            waiter = queue.popleft()
            if not queue:
                del self._waiters[origin]
            if not waiter.future.done():
                self._reserve(origin)
                waiter.future.set_result(None)

    # --- connections -----------------------------------------------------------------

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, target: Target, deadline: float, connect_s: float
    ) -> EngineConnection:
        """Open a connection in a slot already reserved for it."""
        origin = target.origin
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: EngineConnection(loop, origin, self._forget),
                    target.host,
                    target.port,
                    ssl=self._tls_context() if target.tls else None,
                )
        except TimeoutError:
            self._unreserve(origin)
            raise EngineUnreachable(f"no connection within connect_s = {connect_s:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS
            self._unreserve(origin)
            raise EngineUnreachable(str(exc) or type(exc).__name__) from None
        except BaseException:
            self._unreserve(origin)
            raise
        self._connecting -= 1
        if conn.closed:
            self._drop_held(origin)
            raise EngineUnreachable("the engine closed the connection at once")
        conn.busy = True
        self._open.add(conn)
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()  # verified, as aiohttp's default
        return self._tls

    def _close_an_idle(self) -> bool:
        """Free a slot by closing the oldest idle connection of any engine."""
        for idle in self._idle.values():
            if idle:
                conn = idle.popleft()
                conn.close()
                self._forget(conn)
                return True
        return False

    def _forget(self, conn: EngineConnection) -> None:
        """``conn`` is closed: its slot is free (idempotent)."""
        if conn in self._open:
            self._open.discard(conn)
            self._drop_held(conn.origin)
