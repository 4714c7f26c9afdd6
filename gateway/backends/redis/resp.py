"""A minimal multiplexed Redis client for the request path (RESP2 over one connection).

Every gateway request makes a Redis call or two (rate limits), so the client's
own cost matters: redis-py checks a connection out of a pool, builds and parses
each command in pure Python and waits for its reply before the connection can
serve anyone else. Here every caller writes its command straight onto one
shared connection and waits on a future; Redis answers in order, so replies
resolve the futures first-in first-out. Commands from concurrent requests go
out back to back (pipelined) with no pool and no per-call timers.

Writes are corked: the commands made in one event-loop turn (a request's cache
lookup and its admission, another's settlement and cache store, ...) leave
together in one socket write at the end of that turn, when the client's flush,
scheduled by the turn's first command, runs. On loopback a write costs its sender
the delivery too (tens of µs of CPU), and Redis pays a read for each: one write per
turn instead of one per command cut both. A command waits at most the rest of the
turn it was made in, and the order of commands on the connection is the order they
were made. A batching caller (the rate limiter) adds its batch just before the
write with :meth:`RespClient.before_flush`, so it still leaves in the same write.

Deadlines: every call fails with :class:`StoreUnavailable` at most ``timeout_s``
after it began, reconnection included. A watchdog wakes at the oldest unanswered
call's deadline (or every ``timeout_s / 4`` while none waits) and fails the
connection when a call is past it; callers queued behind a connection attempt
that failed share its failure rather than each trying again in turn.

Replies are matched to calls by order alone, so one reply too many or too few
would hand every later caller someone else's answer. Each call therefore says
which reply types it accepts (:data:`BULK`, :data:`STATUS`, ...): a reply of
another type, a reply nobody asked for, or bytes that are not RESP fail every
call waiting on the connection with :class:`StoreUnavailable` and close it, and
the next call reconnects. A caller that finds a well-typed reply wrong can do
the same with :meth:`RespClient.reset`. Error replies (``-ERR ...``) are still
replies in order: they fail only their own call, as :class:`RedisReplyError`
(itself a :class:`StoreUnavailable`), and keep the connection.

Only what the hot path needs: ``call`` and ``evalsha``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote, urlparse

from gateway.backends.redis.resp_wire import (
    ANY,
    ERROR,
    NIL,
    OK,
    STATUS,
    Incomplete,
    RedisReplyError,
    encode_command,
    parse_reply,
)
from gateway.errors import StoreUnavailable


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # futures are made here: no running-loop lookup (getpid on 3.11)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future[Any], float, bytes]] = deque()
        """Calls waiting for a reply, in the order sent: future, when the call began,
        the reply types it accepts."""
        self.closed = False
        self._buffer = bytearray()
        self._out: list[bytes] = []
        """Commands queued for the next write (:meth:`flush`), in order."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position = 0
        pending = self.pending
        reply: Any  # bytes, None, an int, a list or an error: not what the first branch says
        try:
            while position < len(buffer) and pending:
                kind = buffer[position]
                # The replies every request gets (a store's OK, a miss's nil) need no parsing.
                if buffer.startswith(OK, position):
                    reply, position = b"OK", position + len(OK)
                elif buffer.startswith(NIL, position):
                    reply, position = None, position + len(NIL)
                else:
                    reply, position = parse_reply(buffer, position)
                future, _, accepted = pending.popleft()
                if accepted and kind not in accepted and kind != ERROR:
                    shown = bytes(buffer[:position][-60:])
                    self.fail(StoreUnavailable(f"unexpected Redis reply {shown!r}"), future)
                    return
                if future.done():
                    continue
                if isinstance(reply, RedisReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except Incomplete:
            pass
        except (StoreUnavailable, ValueError, RecursionError) as exc:
            self.fail(StoreUnavailable(f"malformed Redis reply: {exc}"))
            return
        if position < len(buffer) and not pending:
            self.fail(StoreUnavailable("Redis sent a reply no command asked for"))
            return
        del buffer[:position]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreUnavailable(f"redis connection lost: {exc or 'closed by the server'}"))

    def queue(
        self, payload: bytes, future: asyncio.Future[Any], accepted: bytes, began: float
    ) -> None:
        """Add a command to the next write; its reply will resolve ``future``."""
        self.pending.append((future, began, accepted))
        self._out.append(payload)

    def send(
        self, payload: bytes, future: asyncio.Future[Any], accepted: bytes, began: float
    ) -> None:
        """Write a command now (behind anything queued before it)."""
        self.queue(payload, future, accepted, began)
        self.flush()

    def flush(self) -> None:
        """Write every queued command, in one write."""
        out = self._out
        if not out or self.closed:
            return
        assert self.transport is not None
        self._out = []
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def fail(self, exc: Exception, first: asyncio.Future[Any] | None = None) -> None:
        """Close the connection; ``first`` (already taken off the queue) and every call
        still waiting on it fail with ``exc``."""
        self.closed = True
        self._out = []
        if first is not None and not first.done():
            first.set_exception(exc)
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def oldest(self) -> float | None:
        """When the longest-waiting call began (None: none waits). Not always the first
        in the queue: a call that had to reconnect counts from before it connected."""
        return min(began for _, began, _ in self.pending) if self.pending else None


class RespClient:
    """One shared, pipelined connection to the Redis at ``url``."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme: {parsed.scheme!r}")
        self._parsed = parsed
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._failed_at = float("-inf")
        self._failure = ""
        self._watchdog: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._before_flush: list[Callable[[], None]] = []

    async def call(self, *args: bytes | str | int, accept: bytes = ANY) -> Any:
        return await self.call_encoded(encode_command(args), accept)

    async def call_encoded(self, command: bytes, accept: bytes = ANY) -> Any:
        """Send one command already in RESP form and wait for its reply (of a type in
        ``accept``; :data:`ANY` takes every type)."""
        began = time.monotonic()
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect(began)
        future: asyncio.Future[Any] = connection.loop.create_future()
        connection.queue(command, future, accept, began)
        self._schedule_flush()
        return await future

    def send_nowait(self, *args: bytes | str | int, accept: bytes = ANY) -> asyncio.Future[Any]:
        """Send the command (in this turn's write) and return its reply's future,
        without waiting.

        Redis runs one connection's commands in order, so anything this client sends
        later runs after it. With no connection up, the command goes out once one is.
        """
        return self.send_encoded(encode_command(args), accept)

    def send_encoded(self, command: bytes, accept: bytes = ANY) -> asyncio.Future[Any]:
        """:meth:`send_nowait` for a command already in RESP form (``*<n>\\r\\n...``)."""
        connection = self._connection
        if connection is None or connection.closed:
            return asyncio.ensure_future(self.call_encoded(command, accept))
        future: asyncio.Future[Any] = connection.loop.create_future()
        connection.queue(command, future, accept, time.monotonic())
        self._schedule_flush()
        return future

    def create_future(self) -> asyncio.Future[Any]:
        """A future on the connection's loop (the running one when not connected)."""
        return self._loop().create_future()

    def _loop(self) -> asyncio.AbstractEventLoop:
        connection = self._connection
        return connection.loop if connection is not None else asyncio.get_running_loop()

    def before_flush(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, just before this turn's write: the commands it sends
        leave in that write."""
        self._before_flush.append(callback)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop().call_soon(self._flush)

    def _flush(self) -> None:
        """The end of a turn: the batching callers' commands, then one write."""
        callbacks, self._before_flush = self._before_flush, []
        try:
            for callback in callbacks:
                callback()
        finally:
            self._flush_scheduled = False
            connection = self._connection
            if connection is not None:
                connection.flush()
            if self._before_flush:  # added by a callback: they go with the next write
                self._schedule_flush()

    def reset(self, reason: str) -> None:
        """Fail every call waiting and close the connection (the next call reconnects):
        for a caller whose reply had the right type but not the right content, so the
        replies behind it may be out of step with their calls."""
        if self._connection is not None and not self._connection.closed:
            self._connection.fail(StoreUnavailable(reason))

    async def evalsha(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        """Run a Lua script by its SHA-1, loading it first if Redis does not know it."""
        sha = hashlib.sha1(script.encode()).hexdigest()
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", script, len(keys), *keys, *args)

    async def close(self) -> None:
        """Send what this turn queued (a last settlement), then close."""
        self._flush()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._connection is not None:
            self._connection.fail(StoreUnavailable("client closed"))
            self._connection = None

    async def _connect(self, began: float) -> _Connection:
        """The open connection, or a new one ready by ``began + timeout_s``. A call that
        waited while another's attempt failed fails with it, at once."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is not None and not self._connection.closed:
                return self._connection
            if self._failed_at >= began:
                raise StoreUnavailable(self._failure)
            left = began + self._timeout_s - time.monotonic()
            try:
                connection = await asyncio.wait_for(self._open(), max(left, 0.0))
            except (OSError, TimeoutError, StoreUnavailable) as exc:
                self._failed_at = time.monotonic()
                self._failure = f"cannot connect to redis: {exc!r}"
                raise StoreUnavailable(self._failure) from None
            self._connection = connection
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch(), name="redis-watchdog")
            return connection

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        parsed = self._parsed
        if parsed.scheme == "unix":
            _, connection = await loop.create_unix_connection(
                lambda: _Connection(loop), parsed.path
            )
        else:
            context = ssl.create_default_context() if parsed.scheme == "rediss" else None
            _, connection = await loop.create_connection(
                lambda: _Connection(loop),
                parsed.hostname or "127.0.0.1",
                parsed.port or 6379,
                ssl=context,
            )
        try:
            if parsed.password is not None:
                user = unquote(parsed.username) if parsed.username else None
                secret = unquote(parsed.password)
                auth = ("AUTH", user, secret) if user else ("AUTH", secret)
                await self._handshake(connection, auth)
            database = parsed.path.strip("/") if parsed.scheme != "unix" else ""
            if database and database != "0":
                await self._handshake(connection, ("SELECT", database))
        except BaseException:  # refused, or out of time (cancelled): never leak the socket
            connection.fail(StoreUnavailable("redis handshake failed"))
            raise
        return connection

    @staticmethod
    async def _handshake(connection: _Connection, args: tuple[str, ...]) -> None:
        future: asyncio.Future[Any] = connection.loop.create_future()
        connection.send(encode_command(args), future, STATUS, time.monotonic())
        await future

    async def _watch(self) -> None:
        """Fail a connection whose longest-waiting call is past its deadline; sleep until
        the next deadline can pass (a quarter of the timeout while no call waits)."""
        timeout = self._timeout_s
        while True:
            pause = timeout / 4
            connection = self._connection
            oldest = None if connection is None or connection.closed else connection.oldest()
            if connection is not None and oldest is not None:
                left = oldest + timeout - time.monotonic()
                if left <= 0:
                    connection.fail(StoreUnavailable("redis did not answer within the timeout"))
                else:
                    pause = left
            await asyncio.sleep(pause)
