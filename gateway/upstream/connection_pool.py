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

At most ``limit`` connections are open or opening at once, across all engines; a
request over the limit first closes an idle connection to another engine, else
waits for one to be handed back. Health probes and metrics scrapes never wait
(:meth:`ConnectionPool.connect` with ``wait=False``): an engine whose connections
are all busy serving is not down, and a probe that queued behind them would say so.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

from gateway.upstream.connection import EngineConnection
from gateway.upstream.target import Target
from gateway.upstream.transport import EngineUnreachable


class ConnectionPool:
    def __init__(self, limit: int, keepalive_s: float) -> None:
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._idle: dict[tuple[str, str, int], deque[EngineConnection]] = {}
        self._open: set[EngineConnection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None

    def take_idle(self, origin: tuple[str, str, int]) -> EngineConnection | None:
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

    async def connect(
        self, target: Target, connect_s: float, *, wait: bool = True
    ) -> EngineConnection:
        """A new connection to ``target``, once the limit allows one (``wait=False``: at
        once, past the limit if need be); it must connect within ``connect_s`` or
        :class:`EngineUnreachable` is raised."""
        while (
            wait and len(self._open) + self._connecting >= self._limit and not self._close_an_idle()
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return await self._connect(target, connect_s)

    def release(self, conn: EngineConnection) -> None:
        """Take back a connection whose request is over: kept when reusable, else closed."""
        if not conn.busy:
            return  # already handed back
        conn.busy = False
        if not conn.reusable() or self._waiters:
            conn.close()  # a waiting request to another engine gets the slot
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

    async def _connect(self, target: Target, connect_s: float) -> EngineConnection:
        loop = asyncio.get_running_loop()
        self._connecting += 1
        try:
            async with asyncio.timeout(connect_s):
                _, conn = await loop.create_connection(
                    lambda: EngineConnection(loop, target.origin, self._forget),
                    target.host,
                    target.port,
                    ssl=self._tls_context() if target.tls else None,
                )
        except TimeoutError:
            raise EngineUnreachable(f"no connection within connect_s = {connect_s:g} s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise EngineUnreachable(str(exc) or type(exc).__name__) from None
        finally:
            self._connecting -= 1
            self._wake_one()
        if conn.closed:
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
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
