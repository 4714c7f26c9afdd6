"""The rate limiter for one process with no Redis: the Lua script's twin in Python.

Same sliding-window log, same decisions, same tests (the unit tests run every
case against both backends). Limits hold for this process only, which is why
the settings refuse rate-limited keys with ``server.workers > 1`` and no Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.ratelimit.limits import NEVER, WINDOW_S, Decision, LimitScope, RefusalKind, ScopeState


@dataclass
class _Log:
    entries: deque[tuple[float, str, int]] = field(default_factory=deque)
    tokens: int = 0
    slots: dict[str, float] = field(default_factory=dict)

    def expire(self, now: float, window_s: float) -> None:
        cutoff = now - window_s
        while self.entries and self.entries[0][0] <= cutoff:
            self.tokens -= self.entries.popleft()[2]
        for request_id, expiry in list(self.slots.items()):
            if expiry <= now:
                del self.slots[request_id]

    def refusal(
        self, scope: LimitScope, cost: int, now: float, window_s: float
    ) -> tuple[RefusalKind, float] | None:
        rpm, tpm, max_concurrent = scope.limits.as_args()
        count = len(self.entries)
        if rpm and count + 1 > rpm:
            return "requests", self.entries[count - rpm][0] + window_s - now
        if tpm and self.tokens + cost > tpm:
            if cost > tpm:
                return "tokens", NEVER
            freed = 0
            for admitted_at, _, tokens in self.entries:
                freed += tokens
                if self.tokens - freed + cost <= tpm:
                    return "tokens", admitted_at + window_s - now
            return "tokens", window_s
        if max_concurrent and len(self.slots) + 1 > max_concurrent:
            return "concurrency", 1.0
        return None

    def state(self, now: float, window_s: float) -> ScopeState:
        reset = self.entries[0][0] + window_s - now if self.entries else 0.0
        return ScopeState(len(self.entries), self.tokens, max(reset, 0.0))


class MemoryLimiter:
    """:class:`gateway.ratelimit.limits.LimiterBackend` in this process's memory."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S
    ) -> None:
        self._clock = clock
        self._window_s = window_s
        self._logs: dict[str, _Log] = {}

    def admit(
        self, scopes: Sequence[LimitScope], request_id: str, tokens: int, lease_s: float
    ) -> asyncio.Future[Decision]:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        future.set_result(self._decide(scopes, request_id, tokens, lease_s))
        return future

    def _decide(
        self, scopes: Sequence[LimitScope], request_id: str, tokens: int, lease_s: float
    ) -> Decision:
        now = self._clock()
        logs = [self._logs.setdefault(scope.key, _Log()) for scope in scopes]
        refusal: tuple[RefusalKind, float] | None = None
        for scope, log in zip(scopes, logs, strict=True):
            log.expire(now, self._window_s)
            refusal = refusal or log.refusal(scope, tokens, now, self._window_s)
        if refusal is None:
            for scope, log in zip(scopes, logs, strict=True):
                log.entries.append((now, request_id, tokens))
                log.tokens += tokens
                if scope.limits.max_concurrent:
                    log.slots[request_id] = now + lease_s
        states = tuple(log.state(now, self._window_s) for log in logs)
        if refusal is None:
            return Decision(True, None, 0.0, states)
        return Decision(False, refusal[0], refusal[1], states)

    def settle(
        self, scopes: Sequence[LimitScope], request_id: str, reserved: int, actual: int | None
    ) -> None:
        for scope in scopes:
            log = self._logs.get(scope.key)
            if log is None:
                continue
            log.slots.pop(request_id, None)
            if actual is None or actual == reserved:
                continue
            for index in range(len(log.entries) - 1, -1, -1):  # recent requests are at the end
                admitted_at, rid, tokens = log.entries[index]
                if rid == request_id:
                    log.entries[index] = (admitted_at, rid, actual)
                    log.tokens += actual - tokens
                    break

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        until = self._clock() + lease_s
        for scope in scopes:
            log = self._logs.get(scope.key)
            if log is not None and request_id in log.slots:
                log.slots[request_id] = until

    async def close(self) -> None:
        self._logs.clear()
