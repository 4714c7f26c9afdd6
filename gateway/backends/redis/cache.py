"""Cache entries in Redis: ``GET`` / ``SET ... EX`` on the lean pipelined client.

Both leave in the event-loop turn's one write (see :mod:`gateway.backends.redis.resp`):
a lookup with its request's admission, a store with its request's settlement.

A ``GET`` takes only a bulk string (or nil) and a ``SET`` only a status for an
answer: any other reply fails the call and resets the connection (see
:mod:`gateway.backends.redis.resp`), and the lookup counts as a store failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.resp import BULK, STATUS
from gateway.errors import StoreUnavailable


class RedisEntryStore:
    """:class:`gateway.cache.response_cache.EntryStore` in the shared Redis
    (``vgate:cache:<key>``)."""

    def __init__(self, link: RedisLink, prefix: str = "vgate:cache:") -> None:
        self._link = link
        self._prefix = prefix

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        self._link.check()
        reply = self._link.fast.send_nowait("GET", self._prefix + key, accept=BULK)
        result: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def deliver(done: asyncio.Future[Any]) -> None:
            if result.done():
                return
            error = StoreUnavailable("cancelled") if done.cancelled() else done.exception()
            if error is not None:
                self._link.failed(error)
                result.set_exception(StoreUnavailable(str(error)))
                return
            self._link.succeeded()
            value = done.result()
            result.set_result(value if isinstance(value, bytes) else None)

        reply.add_done_callback(deliver)
        return result

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        self._link.check()
        reply = self._link.fast.send_nowait(
            "SET", self._prefix + key, value, "EX", ttl_s, accept=STATUS
        )
        reply.add_done_callback(self._stored)

    def _stored(self, done: asyncio.Future[Any]) -> None:
        if not done.cancelled() and done.exception() is not None:
            self._link.failed(done.exception() or StoreUnavailable("set failed"))
