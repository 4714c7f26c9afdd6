"""Cache entries in Redis: ``GET`` / ``SET ... EX`` on the lean pipelined client.

Both leave in the event-loop turn's one write (see :mod:`gateway.backends.redis.resp`):
a lookup with its request's admission, a store with its request's settlement.

A ``GET`` takes only a bulk string (or nil) and a ``SET`` only a status for an
answer: any other reply fails the call and resets the connection (see
:mod:`gateway.backends.redis.resp`), and the lookup counts as a store failure.

One error reply is about the key, not about Redis: ``WRONGTYPE``, a value of another
type under a cache key (another program's, an operator's). Redis answered, so it is not
marked down (that would send every request's rate limits to
``ratelimit.on_redis_error`` for ``redis.retry_s``, with ``fail_closed`` 503s for all,
renewed by each request for that key); the key is deleted instead, so that the next
identical request misses and stores the engine's answer there (this one bypasses).
A value of the right type but not an entry decodes as a miss
(:meth:`gateway.cache.entry.Entry.decode`) and is overwritten.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.resp_wire import BULK, STATUS, RedisReplyError
from gateway.errors import StoreUnavailable

_WRONG_TYPE = "WRONGTYPE"
"""Redis's error for a command on a key holding another type of value."""
_INTEGER = b":"
"""The reply type of ``DEL``."""


class RedisEntryStore:
    """:class:`gateway.cache.response_cache.EntryStore` in the shared Redis
    (``vgate:cache:<key>``).

    Every request looks up and stores, so each command is one format call in RESP form
    (no generic encoding), and a lookup's future is the client's own: a ``GET`` that
    only takes a bulk string or nil already holds ``bytes`` or None, or fails with
    :class:`StoreUnavailable`."""

    def __init__(self, link: RedisLink, prefix: str = "vgate:cache:") -> None:
        self._link = link
        self._prefix = prefix.encode()

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        self._link.check()
        name = self._prefix + key.encode()
        command = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(name), name)
        reply: asyncio.Future[bytes | None] = self._link.fast.send_encoded(command, BULK)
        reply.add_done_callback(partial(self._answered, name))
        return reply

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        self._link.check()
        name, ttl = self._prefix + key.encode(), b"%d" % ttl_s
        command = b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$%d\r\n%s\r\n" % (
            len(name), name, len(value), value, len(ttl), ttl
        )  # fmt: skip
        self._link.fast.send_encoded(command, STATUS).add_done_callback(self._stored)

    def _answered(self, name: bytes, done: asyncio.Future[Any]) -> None:
        """A lookup's answer tells whether Redis is up (a cancelled one, whose request
        left, says nothing); a value of another type under ``name`` is deleted."""
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            self._link.succeeded()
        elif isinstance(error, RedisReplyError) and str(error).startswith(_WRONG_TYPE):
            self._link.succeeded()  # Redis answered: it is up, the key is not ours
            command = b"*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n" % (len(name), name)
            self._link.fast.send_encoded(command, _INTEGER).add_done_callback(self._stored)
        else:
            self._link.failed(error)

    def _stored(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            self._link.failed(done.exception() or StoreUnavailable("set failed"))
