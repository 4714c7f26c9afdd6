"""The rate limiter in Redis: the Lua script ``limiter.lua``, called in batches.

Every decision is made inside Redis by the script, atomically, so any number
of gateway replicas enforce one limit together; the script reads the time from
Redis, so replicas whose clocks disagree still agree.

Admissions made in the same event-loop turn go to Redis as one script call (at
most :data:`MAX_BATCH` operations): one write, one round trip, one reply to
parse, however many requests are waiting. Each operation in a batch is still
decided on its own, in order, exactly as if sent alone. A settlement is never
waited for: it joins the next batch of admissions, or goes alone after
:data:`SETTLE_DELAY_S`; either way Redis applies it before any admission this
gateway sends later, so a client's next request through the same gateway finds
its concurrency slot free. (Through another gateway, within that millisecond,
it may not yet.)
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

from gateway.backends.redis_link import RedisLink
from gateway.backends.resp import RedisReplyError
from gateway.errors import StoreUnavailable
from gateway.ratelimit import (
    NEVER,
    REFUSAL_KINDS,
    WINDOW_S,
    Decision,
    LimitScope,
    ScopeState,
)

_SCRIPT = resources.files("gateway.backends").joinpath("limiter.lua").read_text("utf-8")
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()
MAX_BATCH = 128
SETTLE_DELAY_S = 0.001
"""How long a settlement may wait for a decision to share its call (then it goes alone)."""

_Waiter = tuple["asyncio.Future[list[int]]", int] | None
"""An admission's reply future and scope count; None for a settlement."""


class RedisLimiter:
    """:class:`gateway.ratelimit.LimiterBackend` on a shared Redis."""

    def __init__(
        self, link: RedisLink, prefix: str = "vgate:rl:", window_s: float = WINDOW_S
    ) -> None:
        self._link = link
        self._prefix = prefix
        self._window_ms = int(window_s * 1000)
        self._keys: list[str] = []
        self._args: list[str | int] = []
        self._waiters: list[_Waiter] = []
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._names: dict[str, tuple[str, str, str]] = {}  # scope → its three Redis keys

    async def admit(
        self, scopes: Sequence[LimitScope], request_id: str, tokens: int, lease_s: float
    ) -> Decision:
        self._link.check()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        limits: list[int] = []
        for scope in scopes:
            limits.extend(scope.limits.as_args())
        self._add(scopes, ["a", len(scopes), request_id, tokens, int(lease_s * 1000), *limits],
                  (future, len(scopes)))  # fmt: skip
        reply = await future
        states = tuple(
            ScopeState(requests=reply[i], tokens=reply[i + 1], reset_s=reply[i + 2] / 1000)
            for i in range(3, len(reply), 3)
        )
        refused = reply[1]
        return Decision(
            admitted=bool(reply[0]),
            refused=REFUSAL_KINDS[refused - 1] if refused else None,
            retry_after_s=NEVER if reply[2] < 0 else reply[2] / 1000,
            states=states,
        )

    def settle(
        self, scopes: Sequence[LimitScope], request_id: str, reserved: int, actual: int | None
    ) -> None:
        self._link.check()
        settled = -1 if actual is None else actual
        self._add(scopes, ["s", len(scopes), request_id, reserved, settled], None)

    async def close(self) -> None:
        """The link is shared and closed by its owner."""
        self._flush()

    def _add(self, scopes: Sequence[LimitScope], args: list[str | int], waiter: _Waiter) -> None:
        for scope in scopes:
            keys = self._names.get(scope.key)
            if keys is None:
                base = f"{self._prefix}{scope.key}"
                keys = self._names[scope.key] = (f"{base}:log", f"{base}:tokens", f"{base}:slots")
            self._keys += keys
        self._args += args
        self._waiters.append(waiter)
        if len(self._waiters) >= MAX_BATCH:
            self._flush()
        elif waiter is None:  # a settlement waits (briefly) to ride with the next decision
            if self._timer is None and not self._scheduled:
                self._timer = asyncio.get_running_loop().call_later(SETTLE_DELAY_S, self._flush)
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiters:
            return
        keys, args, waiters = self._keys, self._args, self._waiters
        self._keys, self._args, self._waiters = [], [], []
        self._send("EVALSHA", _SHA, keys, args, waiters)

    def _send(
        self,
        command: str,
        script: str,
        keys: list[str],
        args: list[str | int],
        waiters: list[_Waiter],
    ) -> None:
        reply = self._link.fast.send_nowait(
            command, script, len(keys), *keys, self._window_ms, *args
        )
        reply.add_done_callback(lambda done: self._deliver(done, command, keys, args, waiters))

    def _deliver(
        self,
        done: asyncio.Future[Any],
        command: str,
        keys: list[str],
        args: list[str | int],
        waiters: list[_Waiter],
    ) -> None:
        error = StoreUnavailable("cancelled") if done.cancelled() else done.exception()
        unknown_script = isinstance(error, RedisReplyError) and str(error).startswith("NOSCRIPT")
        if unknown_script and command == "EVALSHA":  # first use since Redis started
            self._send("EVAL", _SCRIPT, keys, args, waiters)
            return
        if error is not None:
            self._link.failed(error)
            failure = StoreUnavailable(str(error))
            for waiter in waiters:
                if waiter is not None and not waiter[0].done():
                    waiter[0].set_exception(failure)
            return
        self._link.succeeded()
        reply: list[int] = done.result()
        position = 0
        for waiter in waiters:
            if waiter is None:
                continue
            future, scopes = waiter
            size = 3 + 3 * scopes
            if not future.done():
                future.set_result(reply[position : position + size])
            position += size
