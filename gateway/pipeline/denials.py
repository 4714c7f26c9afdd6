"""Refusing a key that is over its request rate before reading its request.

Admission needs the parsed request (its token estimate), and parsing a large
body costs far more than refusing it. A key refused for its requests-per-minute
limit cannot be admitted again until its window lets the oldest request out:
the limiter says when (``retry-after-ms``). Until then this gateway answers the
same 429 at once, with the time left, without parsing the body or asking Redis.

Only ``requests`` refusals are remembered, and only for keys whose one scope is
key-wide (no per-model limits, whose refusal would depend on the model the body
names): a token refusal can end early when another request settles below its
reservation, and a concurrency refusal ends whenever a request finishes. Those
still get their 429 after parsing. A refusal is remembered with the ``rpm`` it was
decided under, and holds only while the key still has that limit: a key revoked and
made again under its name with another ``rpm`` (its counters are its name's, so they
carry on) is decided by the limiter at once, not refused for up to a minute on the
old key's limit. The memo is bounded; it is per process, like
any replica's view, and can only refuse what the limiter itself refused.

A refusal decided by the local fallback limiter (Redis unreachable, ``ratelimit.
on_redis_error: local``, each limit divided by ``replicas_hint``) is not remembered:
it counts this replica's share, not the key's window, and once Redis answers again
the shared limiter decides (before, the memo kept refusing the key for up to a
minute after Redis was back, on a count Redis never saw). While Redis is down such a
key's requests are parsed and refused by the local limiter, in memory.

A 429 answered from the memo is a rate-limited request like the limiter's own: it
is counted in ``vgate_rate_limited_requests_total`` (kind ``requests``) too, or the
figure would show one refusal per window however many requests were refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import RateLimitError
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.limits import retry_after_header

DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class _Denial:
    until: float
    message: str
    headers: dict[str, str]
    rpm: int | None


class DenialMemo:
    """Keys over their request rate, by key name, until their window reopens."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._max_keys = max_keys
        self._denials: dict[str, _Denial] = {}

    def check(self, key_name: str, rpm: int | None = None) -> None:
        """Raise the key's 429 again if its window has not reopened yet and the key
        still has the ``rpm`` it was refused under."""
        if not self._denials:
            return
        denial = self._denials.get(key_name)
        if denial is None:
            return
        left = denial.until - self._clock()
        if left <= 0 or denial.rpm != rpm:
            del self._denials[key_name]
            return
        if self._metrics is not None:
            self._metrics.rate_limited.labels(key_name, "requests").inc()
        raise RateLimitError(denial.message, "requests", denial.headers | retry_after_header(left))

    def note(self, key_name: str, error: RateLimitError, rpm: int | None = None) -> None:
        """Remember a refusal of ``key_name`` for its request rate, under the key's
        ``rpm`` (others are ignored, and so is one the local fallback limiter decided:
        see the module docstring)."""
        if error.error_type != "requests" or error.local:
            return
        wait_ms = error.headers.get("retry-after-ms", "")
        if not wait_ms.isdigit():
            return
        if len(self._denials) >= self._max_keys and key_name not in self._denials:
            self._expire()
            if len(self._denials) >= self._max_keys:
                return
        until = self._clock() + int(wait_ms) / 1000
        self._denials[key_name] = _Denial(until, error.message, dict(error.headers), rpm)

    def __len__(self) -> int:
        return len(self._denials)

    def _expire(self) -> None:
        now = self._clock()
        for name in [n for n, d in self._denials.items() if d.until <= now]:
            del self._denials[name]
