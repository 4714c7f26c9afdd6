"""Admission: charge a request to its key's rate limits, and settle the charge later.

:meth:`Admission.admit` reserves (one backend call) and returns a
:class:`Ticket`, or raises 429 with OpenAI's headers. The ticket is settled
exactly once, on every path: with the real token ``usage`` when the response
ends, with 0 tokens when the request failed before the engine produced
anything, or keeping the reservation when the outcome is unknown (the client
left, the stream broke). Settling frees the concurrency slot. It is sent in the
event-loop turn that ends the response but never waited for: Redis runs it
before anything this gateway sends later, so a client that sends its next
request right away finds its slot free.

Concurrency slots are leases: :meth:`Admission.renew_leases` (run every third
of ``ratelimit.concurrency_lease_s``) extends those of the requests still in
flight, so a long stream keeps its slot, while the slots of a gateway that
died free within one lease.

When the backend is unreachable, ``ratelimit.on_redis_error`` decides:
``fail_open`` admits without limits, ``fail_closed`` answers 503; both are
counted in ``vgate_redis_errors_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config.sections import RateLimitSettings
from gateway.errors import DependencyUnavailableError, RateLimitError, StoreUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.limits import (
    NEVER,
    Decision,
    LimiterBackend,
    LimitScope,
    RawHeaders,
    ScopesMemo,
    as_text,
    estimate_tokens,
    format_duration,
    headline,
    retry_after_header,
)

log = logging.getLogger("vgate.ratelimit")


@dataclass(frozen=True, slots=True)
class _Charge:
    """What admitting to one set of scopes needs besides the request: worked out once
    per set (it runs on every request)."""

    scopes: tuple[LimitScope, ...]
    counts_tokens: bool
    holds_slot: bool  # a concurrency limit applies: the lease is renewed while in flight
    key_name: str  # the key's name, for metrics


class Ticket:
    """One admitted request's reservation; settled once, whichever path ends it."""

    __slots__ = (
        "__weakref__",
        "_admission",
        "_settled",
        "charge",
        "raw_headers",
        "request_id",
        "reserved",
        "wants_usage",
    )

    def __init__(
        self,
        admission: Admission | None,
        charge: _Charge | None,
        request_id: str,
        reserved: int,
        raw_headers: RawHeaders,
    ) -> None:
        self._admission = admission
        self.charge = charge
        """What the request was charged to (None for the free pass)."""
        self._settled = admission is None
        self.request_id = request_id
        self.reserved = reserved
        self.raw_headers = raw_headers
        """The ``x-ratelimit-*`` headers, ready to append to a response's raw headers."""
        self.wants_usage = charge is not None and charge.counts_tokens
        """True when a token limit applies, so the real usage must be read."""

    @property
    def headers(self) -> dict[str, str]:
        """:attr:`raw_headers` as text, for error answers and replays."""
        return as_text(self.raw_headers)

    def settle(self, actual: int | None) -> None:
        """Charge ``actual`` tokens (``None``: keep the reservation) and free the slot."""
        if self._settled or self._admission is None or self.charge is None:
            return
        self._settled = True
        self._admission.settle(self.charge, self, actual)


FREE_PASS = Ticket(None, None, "", 0, [])
"""The ticket of a request no limit applies to: settling it does nothing."""


class Admission:
    def __init__(
        self, backend: LimiterBackend, settings: RateLimitSettings, metrics: GatewayMetrics
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        # Request ids in the counters: unique per gateway (random prefix) and per request
        # (a counter); drawing random bytes for each one cost 2% of the gateway's CPU.
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count()
        self._charges = ScopesMemo(_charge_of)
        self._leased: dict[str, weakref.ref[Ticket]] = {}
        """Admitted requests holding a concurrency slot, by request id, until settled.
        Held weakly: a ticket dropped without being settled (a bug) stops being
        renewed, so its slot still frees within one lease instead of never."""

    @property
    def leased(self) -> int:
        """Admitted requests holding a concurrency slot right now."""
        return len(self._leased)

    @property
    def renew_interval_s(self) -> float:
        """How often :meth:`renew_leases` should run: a third of a lease, so one
        missed renewal still leaves a lease standing."""
        return self._settings.concurrency_lease_s / 3

    async def renew_leases(self) -> None:
        """Extend the concurrency leases of every request in flight (one batched call)."""
        lease_s = self._settings.concurrency_lease_s
        try:
            for request_id, held in list(self._leased.items()):
                ticket = held()
                if ticket is None or ticket.charge is None:
                    log.warning(
                        "request %s was never settled; its slot frees with its lease", request_id
                    )
                    del self._leased[request_id]
                    continue
                self._backend.renew(ticket.charge.scopes, request_id, lease_s)
        except StoreUnavailable:
            self._metrics.redis_errors.labels("ratelimit").inc()

    async def admit(self, scopes: tuple[LimitScope, ...], body: dict[str, Any]) -> Ticket:
        """Reserve ``body``'s cost in every scope (a key's, and a key-and-model's)."""
        if not scopes:
            return FREE_PASS
        charge = self._charges.get(scopes)
        tokens = 0
        if charge.counts_tokens:
            tokens = estimate_tokens(body, self._settings.default_max_tokens)
        request_id = f"{self._id_prefix}{next(self._ids):x}"
        try:
            decision = await self._backend.admit(
                scopes, request_id, tokens, self._settings.concurrency_lease_s
            )
        except asyncio.CancelledError:  # the client left while Redis decided: undo any charge
            with contextlib.suppress(StoreUnavailable):
                self._backend.settle(scopes, request_id, tokens, 0)
            raise
        except StoreUnavailable:
            self._metrics.redis_errors.labels("ratelimit").inc()
            if self._settings.on_redis_error == "fail_closed":
                raise DependencyUnavailableError(
                    "Rate limits cannot be checked right now; try again shortly.",
                    code="rate_limiter_unavailable",
                    headers={"Retry-After": "1"},
                ) from None
            return FREE_PASS
        headers = headline(scopes, decision.states)
        if not decision.admitted:
            raise self._refusal(scopes, decision, tokens, as_text(headers))
        ticket = Ticket(self, charge, request_id, tokens, headers)
        if charge.holds_slot:
            self._leased[request_id] = weakref.ref(ticket)
        return ticket

    def settle(self, charge: _Charge, ticket: Ticket, actual: int | None) -> None:
        if charge.holds_slot:
            self._leased.pop(ticket.request_id, None)
        charged = ticket.reserved if actual is None else actual
        if charged and charge.counts_tokens:
            self._metrics.tokens_charged.add(charge.key_name, charged)
        try:
            self._backend.settle(charge.scopes, ticket.request_id, ticket.reserved, actual)
        except StoreUnavailable:
            self._metrics.redis_errors.labels("ratelimit").inc()

    def _refusal(
        self,
        scopes: tuple[LimitScope, ...],
        decision: Decision,
        tokens: int,
        headers: dict[str, str],
    ) -> RateLimitError:
        kind = decision.refused or "requests"
        owner = scopes[0].owner
        self._metrics.rate_limited.labels(owner, kind).inc()
        limits = [s.limits for s in scopes]
        if kind == "tokens" and decision.retry_after_s == NEVER:
            limit = min(lim.tpm for lim in limits if lim.tpm is not None)
            message = (
                f"Request too large for key '{owner}': it may use {tokens} tokens "
                f"(prompt estimate + max_tokens) and the limit is {limit} tokens per min. "
                "Lower max_tokens or shorten the prompt."
            )
            return RateLimitError(message, kind, headers)
        wait = format_duration(decision.retry_after_s)
        if kind == "concurrency":
            limit = min(lim.max_concurrent for lim in limits if lim.max_concurrent is not None)
            what = f"concurrent requests: limit {limit}"
        elif kind == "tokens":
            limit = min(lim.tpm for lim in limits if lim.tpm is not None)
            what = f"tokens per min: limit {limit}, requested {tokens}"
        else:
            limit = min(lim.rpm for lim in limits if lim.rpm is not None)
            what = f"requests per min: limit {limit}"
        message = f"Rate limit reached for key '{owner}' on {what}. Please try again in {wait}."
        return RateLimitError(message, kind, headers | retry_after_header(decision.retry_after_s))


def _charge_of(scopes: Sequence[LimitScope]) -> _Charge:
    counts_tokens = any(s.limits.tpm is not None for s in scopes)
    holds_slot = any(s.limits.max_concurrent is not None for s in scopes)
    return _Charge(tuple(scopes), counts_tokens, holds_slot, scopes[0].owner)
