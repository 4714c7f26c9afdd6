"""Rate limits per API key: requests/min, tokens/min and concurrent requests.

Algorithm: a **sliding-window log**. Every admitted request leaves one entry,
``(time, request id, tokens)``, in its key's log; an entry counts for exactly
60 s after its admission. A request is admitted only if, counting it, the last
60 s hold at most ``rpm`` entries and at most ``tpm`` tokens. This is exact at
window edges: no 60 s span, wherever it starts, ever admits more than the limit.
Fixed windows admit up to twice the limit around a boundary; GCRA and token
buckets enforce a *rate with a burst*, which lets through up to ``2R - 1``
requests in the first minute of a burst; the sliding-window counter is an
approximation. The cost is memory proportional to the requests admitted in
the last minute (one sorted-set member each), which is small next to the work
each request causes on a GPU.

Tokens are *reserved* at admission (an estimate of the prompt plus
``max_tokens``) and *reconciled* when the response ends: the entry is rewritten
to the real ``usage``, refunding or charging the difference within the same
window. Concurrency is a set of leases (request id → expiry) released on every
path. A gateway renews the leases of its requests in flight every third of a
lease, so a stream may run for hours; the expiry only matters when a gateway
dies holding one, and frees its slots within one lease.

A refusal carries the earliest time at which the same request would be
admitted (``Retry-After``): when enough old entries leave the window.

Backends (:mod:`gateway.backends`) implement the same decision: one Lua script
in Redis (one round trip, atomic across every gateway replica) or an in-memory
twin for a single process with no Redis.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, Protocol, TypeVar

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
    """Until the oldest request in the window leaves it (and ``remaining`` grows)."""

    def used(self, kind: str) -> int:
        return self.requests if kind == "requests" else self.tokens


class Decision(NamedTuple):
    admitted: bool
    refused: RefusalKind | None
    retry_after_s: float
    states: tuple[ScopeState, ...]


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
        self, scopes: Sequence[LimitScope], request_id: str, tokens: int, lease_s: float
    ) -> Awaitable[Decision]:
        """Decide atomically for every scope; record the request in all of them if admitted.

        Returns the decision's future rather than being a coroutine: one frame less to
        resume on every request (the caller awaits it)."""
        ...

    def settle(
        self, scopes: Sequence[LimitScope], request_id: str, reserved: int, actual: int | None
    ) -> None:
        """Rewrite the reservation to ``actual`` tokens (``None``: keep it) and free the slot.

        Not awaited: the change is applied (memory) or sent (Redis) before this returns,
        ahead of anything this process sends later; its reply is checked in the background.
        """
        ...

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        """Extend a request's concurrency lease to ``lease_s`` from now, where it still
        holds one. Not awaited, like :meth:`settle`."""
        ...

    async def close(self) -> None: ...


def estimate_tokens(body: dict[str, Any], default_max_tokens: int) -> int:
    """Tokens to reserve for a request: the prompt (about 4 characters a token, plus
    a few per chat message) and the completion budget for every choice."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            chars += 16  # role and framing
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) if isinstance(p, str) else 4 * _length(p) for p in prompt)
    budget = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    n = body.get("n") or 1
    if not isinstance(budget, int) or not isinstance(n, int):
        budget, n = default_max_tokens, 1
    return (chars + 3) // 4 + budget * max(n, 1)


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


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
    """``Retry-After`` (whole seconds, at least 1) and the SDK's ``retry-after-ms``."""
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }
