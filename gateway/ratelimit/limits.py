"""Rate limits per API key: requests/min, tokens/min and concurrent requests.

Algorithm: **sliding-window counters**. Time is cut into buckets of 1/60 of the
window (1 s for the minute); per scope, the limiter keeps a request count and a
token sum per bucket, and their sums over the buckets still in the window. A
request counts in the bucket it was admitted in, and a bucket counts until the
window has passed over its *end*: every request counts for at least 60 s and at
most 61 s. A request is admitted only if, counting it, the live buckets hold at
most ``rpm`` requests and ``tpm`` tokens, so no 60 s span, wherever it starts,
ever admits more than the limit (the last second of a request's count is the
price of exactness; fixed windows admit up to twice the limit around a boundary,
GCRA and token buckets let a burst through on top of the rate). The state of a
scope is at most ~61 buckets whatever its traffic, and each decision touches a
bounded number of them; a scope with only ``max_concurrent`` keeps no counters.

Tokens: when a scope has a ``tpm``, what is reserved at admission is what the
engine will be allowed to generate. A request states its prompt (an estimate),
the output it wants per choice (``max_tokens``, or ``ratelimit.default_max_tokens``)
and its number of choices; the limiter grants, atomically, ``min(wanted,
(remaining - prompt) // choices)`` output tokens per choice over every scope with a
``tpm``, reserves ``prompt + choices * granted``, and refuses (``tokens``) when not
even one token per choice fits after the prompt. The gateway writes the grant into
the ``max_tokens`` the engine gets. When the response ends, the reservation is
*settled* to the real ``usage``: in the admission's own bucket while that is in the
window, else (a charge above the reservation) in the current one; a refund whose
reservation has already left the window has nothing left to undo. Concurrency is a
set of leases (request id → expiry) released on every path. A gateway renews the
leases of its requests in flight every third of a lease, so a stream may run for
hours; the expiry only matters when a gateway dies holding one, and frees its slots
within one lease.

A refusal carries the earliest time at which the same request would be admitted
(``Retry-After``): when enough old buckets leave the window.

Backends (:mod:`gateway.backends`) implement the same decision: one Lua script
in Redis (one round trip, atomic across every gateway replica) or an in-memory
twin for a single process with no Redis (also the per-replica fallback of
``ratelimit.on_redis_error: local``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

from gateway.errors import retry_after
from gateway.ratelimit.cost import estimate_tokens as estimate_tokens  # also found here

WINDOW_S = 60.0
RefusalKind = Literal["requests", "tokens", "concurrency"]
REFUSAL_KINDS: tuple[RefusalKind, ...] = ("requests", "tokens", "concurrency")
NEVER = -1.0
"""``retry_after_s`` of a request larger than the token limit itself."""


@dataclass(frozen=True, slots=True)
class Limits:
    """One set of limits; ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None

    def per_minute(self, kind: str) -> int | None:
        """The requests or tokens limit."""
        return self.rpm if kind == "requests" else self.tpm

    def as_args(self) -> tuple[int, int, int]:
        """``(rpm, tpm, max_concurrent)`` with 0 for unlimited (the backends' encoding)."""
        return (self.rpm or 0, self.tpm or 0, self.max_concurrent or 0)


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class LimitScope:
    """Counters kept under ``key`` (a key, or a key and model) and the limits on them.

    ``owner`` names the API key the counters belong to (for messages and metrics);
    the storage layout of ``key`` is the backends' business, never parsed back."""

    key: str
    limits: Limits
    owner: str = ""


class ScopeState(NamedTuple):
    """One scope's counters after a decision (the request included when admitted).

    Decisions are made on every request: tuples are built several times faster
    than frozen dataclasses, and read the same."""

    requests: int
    tokens: int
    reset_s: float
    """Until the oldest bucket in the window leaves it (and ``remaining`` grows)."""

    def used(self, kind: str) -> int:
        return self.requests if kind == "requests" else self.tokens


class Decision(NamedTuple):
    admitted: bool
    refused: RefusalKind | None
    retry_after_s: float
    states: tuple[ScopeState, ...]
    granted: int = 0
    """Output tokens per choice the request may generate (0 when it asked for none)."""
    at: int = -1
    """The bucket the admission was counted in, for its settlement (-1: refused)."""


_Derived = TypeVar("_Derived")


class ScopesMemo(Generic[_Derived]):
    """What is worked out once per set of scopes (counted on every request), kept
    under the tuple's identity: principals keep their scope tuples, so a lookup
    costs no hashing of limits. Each entry holds its tuple, so an id is never
    reused while remembered; past ``limit`` entries the memo starts over."""

    def __init__(
        self, derive: Callable[[Sequence[LimitScope]], _Derived], limit: int = 4096
    ) -> None:
        self._derive = derive
        self._limit = limit
        self._entries: dict[int, tuple[Sequence[LimitScope], _Derived]] = {}

    def get(self, scopes: Sequence[LimitScope]) -> _Derived:
        entry = self._entries.get(id(scopes))
        if entry is not None and entry[0] is scopes:
            return entry[1]
        derived = self._derive(scopes)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(scopes)] = (scopes, derived)
        return derived


class LimiterBackend(Protocol):
    def admit(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        tokens: int,
        lease_s: float,
        wanted: int = 0,
        choices: int = 1,
    ) -> asyncio.Future[Decision]:
        """Decide atomically for every scope; record the request in all of them if admitted.
        (A future, not a coroutine: a caller that leaves once it is decided can still
        read the decision and undo it.)

        ``tokens`` (the prompt) are reserved as they are; with ``wanted`` > 0, up to that
        many output tokens per choice, for ``choices`` choices, are granted on top, as
        many as every scope's remaining ``tpm`` allows (:attr:`Decision.granted`, at
        least 1, or a ``tokens`` refusal).

        Returns the decision's future rather than being a coroutine: one frame less to
        resume on every request (the caller awaits it). A caller that stops waiting
        (cancelled) leaves the undoing to the backend: an admission decided after that
        is settled to 0 tokens by the backend itself."""
        ...

    def settle(
        self,
        scopes: Sequence[LimitScope],
        request_id: str,
        reserved: int,
        actual: int | None,
        at: int = -1,
    ) -> None:
        """Turn the reservation into ``actual`` tokens (``None``: keep it) and free the slot.

        ``at`` is the admission's :attr:`Decision.at`: the difference lands in that bucket
        while it is in the window, else a charge lands in the current one and a refund
        is dropped (its reservation has left the window). Not awaited: the change is
        applied (memory) or sent (Redis) before this returns, ahead of anything this
        process sends later; its reply is checked in the background.
        """
        ...

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        """Extend a request's concurrency lease to ``lease_s`` from now, where it still
        holds one. Not awaited, like :meth:`settle`."""
        ...

    @property
    def fallback(self) -> LimiterBackend | None:
        """A limiter in this process's memory to decide with while this one is
        unreachable (``ratelimit.on_redis_error: local``); None for one that always is."""
        ...

    async def close(self) -> None: ...


RawHeaders = list[tuple[bytes, bytes]]
"""Response headers in the form the ASGI server sends: built once, copied by nobody."""

_HEADER_NAMES = {
    kind: (
        f"x-ratelimit-limit-{kind}".encode(),
        f"x-ratelimit-remaining-{kind}".encode(),
        f"x-ratelimit-reset-{kind}".encode(),
    )
    for kind in ("requests", "tokens")
}


def headline(scopes: Sequence[LimitScope], states: Sequence[ScopeState]) -> RawHeaders:
    """OpenAI's ``x-ratelimit-*`` headers for the tightest scope of each kind, ready to
    send (every response carries them, so they skip every dict and re-encoding)."""
    headers: RawHeaders = []
    if len(scopes) == 1:  # the common case: straight through
        limits, state = scopes[0].limits, states[0]
        reset = format_duration(state.reset_s).encode()  # one scope: one reset for both
        if limits.rpm is not None:
            _add_kind(headers, "requests", limits.rpm - state.requests, limits.rpm, reset)
        if limits.tpm is not None:
            _add_kind(headers, "tokens", limits.tpm - state.tokens, limits.tpm, reset)
        return headers
    for kind in ("requests", "tokens"):
        figures = [
            (limit - state.used(kind), limit, state.reset_s)
            for scope, state in zip(scopes, states, strict=True)
            if (limit := scope.limits.per_minute(kind)) is not None
        ]
        if figures:
            remaining, limit, reset_s = min(figures)
            _add_kind(headers, kind, remaining, limit, format_duration(reset_s).encode())
    return headers


def _add_kind(headers: RawHeaders, kind: str, remaining: int, limit: int, reset: bytes) -> None:
    limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
    headers.append((limit_name, b"%d" % limit))
    headers.append((remaining_name, b"%d" % max(remaining, 0)))
    headers.append((reset_name, reset))


def as_text(headers: RawHeaders) -> dict[str, str]:
    """Raw headers as the ``dict`` error responses and replays take."""
    return {name.decode(): value.decode() for name, value in headers}


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def retry_after_header(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1) and the SDK's ``retry-after-ms`` (at
    least 1): a refusal's wait is never 0 (:func:`gateway.errors.retry_after`)."""
    return retry_after(max(seconds, 0.001))
