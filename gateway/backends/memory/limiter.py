"""The rate limiter for one process with no Redis: the Lua script's twin in Python.

Same sliding-window counters, same buckets, same integer milliseconds, same
decisions, same tests (the unit tests run every case against both backends).
Limits hold for this process only, which is why the settings refuse rate-limited
keys with ``server.workers > 1`` and no Redis; it is also the per-replica limiter
of ``ratelimit.on_redis_error: local`` while Redis is unreachable.

Buckets are kept in a dict in the order they were made, which is their time
order (a request or a late charge only ever adds the current bucket), so the
oldest is the first and trimming pops from the front. Once per window, scopes
whose counters have all left the window and whose leases have all run out are
dropped (as Redis expires their keys), so memory follows the keys in use, not
every key ever seen.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence

from gateway.ratelimit.limits import (
    NEVER,
    WINDOW_S,
    Decision,
    LimiterBackend,
    LimitScope,
    RefusalKind,
    ScopeState,
)


class _Clock:
    """The script's time arithmetic: integer ms, buckets of 1/60 of the window."""

    __slots__ = ("current", "first_live", "now", "res", "window")

    def __init__(self, now_ms: int, window_ms: int) -> None:
        self.now = now_ms
        self.window = window_ms
        self.res = max(window_ms // 60, 1)
        self.current = now_ms // self.res
        self.first_live = (now_ms - window_ms) // self.res

    def leaves_in(self, bucket: int) -> int:
        """ms until ``bucket`` leaves the window."""
        return (bucket + 1) * self.res + self.window - self.now


class _Window:
    """One scope: its buckets (``bucket -> [requests, tokens]``), their sums, and its
    concurrency leases (request id -> expiry ms)."""

    __slots__ = ("buckets", "requests", "slots", "tokens")

    def __init__(self) -> None:
        self.buckets: dict[int, list[int]] = {}
        self.requests = 0
        self.tokens = 0
        self.slots: dict[str, int] = {}

    def trim(self, clock: _Clock) -> None:
        buckets = self.buckets
        while buckets:
            oldest = next(iter(buckets))
            if oldest >= clock.first_live:
                return
            requests, tokens = buckets.pop(oldest)
            self.requests -= requests
            self.tokens -= tokens

    @property
    def oldest(self) -> int | None:
        return next(iter(self.buckets), None)

    def wait_for(self, clock: _Clock, kind: int, excess: int) -> int:
        """ms until the bucket that frees ``excess`` requests (kind 0) or tokens (1)
        leaves the window."""
        freed = 0
        for bucket, counts in self.buckets.items():
            freed += counts[kind]
            if freed >= excess:
                return clock.leaves_in(bucket)
        return clock.window

    def refusal(
        self, limits: tuple[int, int, int], need: int, clock: _Clock
    ) -> tuple[RefusalKind, int] | None:
        rpm, tpm, max_concurrent = limits
        if rpm and self.requests + 1 > rpm:
            return "requests", self.wait_for(clock, 0, self.requests + 1 - rpm)
        if tpm and self.tokens + need > tpm:
            if need > tpm:
                return "tokens", -1
            return "tokens", self.wait_for(clock, 1, self.tokens + need - tpm)
        if max_concurrent and len(self.slots) + 1 > max_concurrent:
            for request_id in [r for r, expiry in self.slots.items() if expiry <= clock.now]:
                del self.slots[request_id]  # leases of gateways that died holding them
            if len(self.slots) + 1 > max_concurrent:
                return "concurrency", 1000
        return None

    def add(self, bucket: int, requests: int, tokens: int) -> None:
        counts = self.buckets.get(bucket)
        if counts is None:
            self.buckets[bucket] = [requests, tokens]
        else:
            counts[0] += requests
            counts[1] += tokens
        self.requests += requests
        self.tokens += tokens

    def state(self, clock: _Clock) -> ScopeState:
        oldest = self.oldest
        reset = 0
        if oldest is not None and (self.requests > 0 or self.tokens > 0):
            reset = max(clock.leaves_in(oldest), 0)
        return ScopeState(self.requests, self.tokens, reset / 1000)

    @property
    def idle(self) -> bool:
        return not self.buckets and not self.slots


class MemoryLimiter:
    """:class:`gateway.ratelimit.limits.LimiterBackend` in this process's memory."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S
    ) -> None:
        self._clock = clock
        self._window_ms = int(window_s * 1000)
        self._windows: dict[str, _Window] = {}
        self._sweep_at = 0

    @property
    def fallback(self) -> LimiterBackend | None:
        return None

    def admit(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        tokens: int,
        lease_s: float,
        wanted: int = 0,
        choices: int = 1,
    ) -> asyncio.Future[Decision]:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        future.set_result(self._decide(scopes, request_id, tokens, lease_s, wanted, choices))
        return future

    def _now(self) -> _Clock:
        now = math.floor(self._clock() * 1000)
        if now >= self._sweep_at:
            self._sweep_at = now + self._window_ms
            clock = _Clock(now, self._window_ms)
            for key, window in list(self._windows.items()):
                window.trim(clock)
                for request_id in [r for r, until in window.slots.items() if until <= now]:
                    del window.slots[request_id]  # as Redis expires a dead gateway's slots
                if window.idle:
                    del self._windows[key]
        return _Clock(now, self._window_ms)

    def _decide(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        prompt: int,
        lease_s: float,
        wanted: int,
        choices: int,
    ) -> Decision:
        clock = self._now()
        windows = [self._windows.setdefault(scope.key, _Window()) for scope in scopes]
        need = prompt + (choices if wanted > 0 else 0)
        granted = wanted
        refusal: tuple[RefusalKind, int] | None = None
        for scope, window in zip(scopes, windows, strict=True):
            window.trim(clock)
            if refusal is not None:
                continue
            limits = scope.limits.as_args()
            refusal = window.refusal(limits, need, clock)
            if refusal is None and limits[1] and wanted > 0:
                granted = min(granted, (limits[1] - window.tokens - prompt) // choices)
        if refusal is not None:
            states = tuple(window.state(clock) for window in windows)
            kind, retry_ms = refusal
            return Decision(False, kind, NEVER if retry_ms < 0 else retry_ms / 1000, states)
        cost = prompt + choices * granted
        lease_until = clock.now + math.floor(lease_s * 1000)
        for scope, window in zip(scopes, windows, strict=True):
            rpm, tpm, max_concurrent = scope.limits.as_args()
            if rpm or tpm:
                window.add(clock.current, 1 if rpm else 0, cost if tpm else 0)
            if max_concurrent:
                window.slots[request_id] = lease_until
        states = tuple(window.state(clock) for window in windows)
        return Decision(True, None, 0.0, states, granted, clock.current)

    def settle(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        reserved: int,
        actual: int | None,
        at: int = -1,
    ) -> None:
        delta = 0 if actual is None else actual - reserved
        clock = self._now() if delta else None
        for scope in scopes:
            window = self._windows.get(scope.key)
            if clock is not None and scope.limits.tpm is not None:
                if at >= clock.first_live:  # its bucket still counts: the difference goes there
                    counts = window.buckets.get(at) if window is not None else None
                    if window is not None and counts is not None:
                        counts[1] += delta
                        window.tokens += delta
                elif delta > 0:  # its bucket left the window: a charge counts from now on
                    if window is None:
                        window = self._windows[scope.key] = _Window()
                    window.trim(clock)
                    window.add(clock.current, 0, delta)
            if window is not None:
                window.slots.pop(request_id, None)

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        until = math.floor(self._clock() * 1000) + math.floor(lease_s * 1000)
        for scope in scopes:
            window = self._windows.get(scope.key)
            if window is not None and request_id in window.slots:
                window.slots[request_id] = until

    async def close(self) -> None:
        self._windows.clear()
