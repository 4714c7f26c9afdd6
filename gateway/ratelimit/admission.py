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

A ticket carries :attr:`Ticket.output_cap` when a token limit applies: the output
tokens per choice the limiter granted, which the pipeline writes into the
``max_tokens`` the engine gets, so what is reserved is what the engine may generate.

When the backend is unreachable, ``ratelimit.on_redis_error`` decides: ``local``
(the default) decides in this process's memory with each limit divided by
``ratelimit.replicas_hint`` (rounded down, at least 1), so the replicas together
stay within the limit; ``fail_open`` admits without limits; ``fail_closed``
answers 503, and the gateway is not ready while it does (:attr:`Admission.refusing`,
read by :mod:`gateway.pool.readiness`). Each failure is counted in
``vgate_redis_errors_total``. A request admitted locally is settled and renewed
locally, wherever Redis is by then.
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

from mypy_extensions import mypyc_attr

from gateway.config.sections import RateLimitSettings
from gateway.errors import DependencyUnavailableError, StoreUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.calibration import PromptCalibration, calibrated
from gateway.ratelimit.cost import Cost, believable, request_cost, wanted_tokens
from gateway.ratelimit.limits import (
    Decision,
    LimiterBackend,
    Limits,
    LimitScope,
    RawHeaders,
    ScopesMemo,
    as_text,
    headline,
    retry_after_header,
)
from gateway.ratelimit.refusal import refusal

log = logging.getLogger("vgate.ratelimit")


@dataclass(frozen=True, slots=True)
class _Charge:
    """What admitting to one set of scopes needs besides the request: worked out once
    per set (it runs on every request)."""

    scopes: tuple[LimitScope, ...]
    counts_tokens: bool
    holds_slot: bool  # a concurrency limit applies: the lease is renewed while in flight
    key_name: str  # the key's name, for metrics
    backend: LimiterBackend  # where it is decided, settled and renewed
    local: _Charge | None  # this process's share of the limits, while Redis is unreachable


@mypyc_attr(native_class=False)  # weakly referenced (gateway/native.py)
class Ticket:
    """One admitted request's reservation; settled once, whichever path ends it."""

    __slots__ = (
        "__weakref__",
        "_admission",
        "_settled",
        "at",
        "charge",
        "estimate",
        "learns",
        "output_cap",
        "prompt",
        "raw_headers",
        "request_id",
        "reserved",
        "shortened",
        "wants_usage",
    )

    def __init__(
        self,
        admission: Admission | None,
        charge: _Charge | None,
        request_id: str,
        reserved: int,
        raw_headers: RawHeaders,
        at: int = -1,
        output_cap: int | None = None,
        shortened: bool = False,
        prompt: int = 0,
        estimate: int = 0,
    ) -> None:
        self._admission = admission
        self.charge = charge
        """What the request was charged to (None for the free pass)."""
        self._settled = admission is None
        self.request_id = request_id
        self.reserved = reserved
        self.raw_headers = raw_headers
        """The ``x-ratelimit-*`` headers, ready to append to a response's raw headers."""
        self.at = at
        """Where the limiter counted the admission (its bucket), for the settlement."""
        self.output_cap = output_cap
        """Output tokens per choice the engine may generate (None: no token limit applies):
        the reservation covers exactly this, so it must reach the engine as ``max_tokens``
        whenever it is lower than what the client asked for, or the client asked for
        nothing."""
        self.shortened = shortened
        """The remaining budget granted less than the request wanted: its answer may be
        shorter than the same request's with budget to spare (not one to share or keep)."""
        self.wants_usage = charge is not None and charge.counts_tokens
        """True when a token limit applies, so the real usage must be read."""
        self.prompt = prompt
        """The prompt's share of :attr:`reserved` (what a request whose engine read
        the prompt and wrote nothing is charged): the estimate times the key's
        calibration factor (:mod:`gateway.ratelimit.calibration`)."""
        self.estimate = estimate
        """The prompt's estimate before calibration, which the engine's count of its
        prompt tokens is compared with."""
        self.learns = self.wants_usage and estimate > 0
        """Whether the engine's prompt tokens teach the key's calibration (pass them
        to :meth:`settle`): a prompt estimated from its text, however small (small
        ones teach pooled, :meth:`PromptCalibration.observe`)."""

    @property
    def headers(self) -> dict[str, str]:
        """:attr:`raw_headers` as text, for error answers and replays."""
        return as_text(self.raw_headers)

    def settle(self, actual: object, prompt_used: object = None) -> None:
        """Charge ``actual`` tokens (``None``, or a count not to believe: keep the
        reservation) and free the slot. (``object``: whatever an engine's usage said.)
        ``prompt_used``: the engine's ``usage.prompt_tokens``, when :attr:`learns`."""
        if self._settled or self._admission is None or self.charge is None:
            return
        self._settled = True
        self._admission.settle(self.charge, self, actual, prompt_used)


FREE_PASS = Ticket(None, None, "", 0, [])
"""The ticket of a request no limit applies to: settling it does nothing."""

_NO_COST = Cost(0, 0, 1)
"""What a request costs where no token limit applies: the limiter counts no tokens."""


class Admission:
    def __init__(
        self,
        backend: LimiterBackend,
        settings: RateLimitSettings,
        metrics: GatewayMetrics,
        calibration: PromptCalibration | None = None,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._calibration = PromptCalibration() if calibration is None else calibration
        # Request ids in the counters: unique per gateway (random prefix) and per request
        # (a counter); drawing random bytes for each one cost 2% of the gateway's CPU.
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count()
        self._local = backend.fallback if settings.on_redis_error == "local" else None
        self._failing = False  # the shared backend's last admission call failed
        self._fails_closed = settings.on_redis_error == "fail_closed"
        self._charges = ScopesMemo(self._charge_of)
        self._leased: dict[str, weakref.ref[Ticket]] = {}
        """Admitted requests holding a concurrency slot, by request id, until settled.
        Held weakly: a ticket dropped without being settled (a bug) stops being
        renewed, so its slot still frees within one lease instead of never."""

    @property
    def refusing(self) -> bool:
        """Whether every request is refused now: ``fail_closed``, and the backend's last
        admission call failed (Redis unreachable, or refusing writes: ``OOM``,
        ``READONLY``); False again once one succeeds. Readiness reads it
        (:mod:`gateway.pool.readiness`): a gateway that refuses everything is not ready.
        Under ``local`` and ``fail_open`` requests are still served: never refusing."""
        return self._failing and self._fails_closed

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
        failed = False
        for request_id, held in list(self._leased.items()):
            ticket = held()
            if ticket is None or ticket.charge is None:
                log.warning(
                    "request %s was never settled; its slot frees with its lease", request_id
                )
                del self._leased[request_id]
                continue
            charge = ticket.charge
            try:
                charge.backend.renew(charge.scopes, request_id, lease_s)
            except StoreUnavailable:
                failed = True
        if failed:
            self._metrics.redis_errors.labels("ratelimit").inc()

    async def admit(
        self,
        scopes: tuple[LimitScope, ...],
        body: dict[str, Any],
        *,
        tokens: bool = True,
        cost_of: Cost | None = None,
    ) -> Ticket:
        """Reserve ``body``'s cost (``cost_of`` when given: a request whose cost is not
        read from a completion's body) in every scope (a key's, and a key-and-model's).

        ``tokens=False``: a request that uses no model (vLLM's tokenize) counts against
        the request rate and concurrency limits only; no tokens are reserved or
        charged."""
        if not scopes:
            return FREE_PASS
        charge = self._charges.get(scopes)
        cost = _NO_COST
        estimate = 0
        if charge.counts_tokens and tokens:
            if cost_of is None:  # estimated from text: calibrated by what the key sent
                cost = request_cost(body, self._settings.default_max_tokens)
                estimate = cost.prompt
                factor = self._calibration.factor(charge.key_name)
                if factor > 1.0:
                    cost = Cost(calibrated(estimate, factor), cost.wanted, cost.choices)
            else:
                cost = cost_of
        request_id = f"{self._id_prefix}{next(self._ids):x}"
        lease_s = self._settings.concurrency_lease_s
        # A future, awaited here (no coroutine layer on every request): a caller that
        # leaves as it is decided has the admission undone (:func:`_undo_if_admitted`).
        pending = None
        try:
            pending = charge.backend.admit(
                charge.scopes, request_id, cost.prompt, lease_s, cost.wanted, cost.choices
            )
            decision = await pending
            self._failing = False
        except StoreUnavailable:
            self._failing = True
            self._metrics.redis_errors.labels("ratelimit").inc()
            local = self._unreachable(charge)
            if local is None:
                return FREE_PASS
            charge = local
            pending = charge.backend.admit(
                charge.scopes, request_id, cost.prompt, lease_s, cost.wanted, cost.choices
            )
            try:
                decision = await pending
            except asyncio.CancelledError:
                _undo_if_admitted(charge, pending, request_id, cost)
                raise
        except asyncio.CancelledError:
            if pending is not None:
                _undo_if_admitted(charge, pending, request_id, cost)
            raise
        headers = headline(charge.scopes, decision.states)
        if not decision.admitted:
            here = charge.backend is not self._backend  # the fallback's: Redis is down
            raise refusal(charge.scopes, decision, cost, as_text(headers), self._metrics, here)
        granted = decision.granted
        ticket = Ticket(
            self,
            charge,
            request_id,
            cost.prompt + cost.choices * granted,
            headers,
            decision.at,
            granted if charge.counts_tokens else None,
            granted < cost.wanted,
            cost.prompt,
            estimate,
        )
        if charge.holds_slot:
            self._leased[request_id] = weakref.ref(ticket)
        return ticket

    def full_cap(self, scopes: tuple[LimitScope, ...], body: dict[str, Any]) -> int | None:
        """The output cap :meth:`admit` gives ``body`` when its budget is not short
        (what it asks for, else ``default_max_tokens``); None when no token limit
        applies (no cap at all). Known before admission: a shared cache keys by it."""
        if not scopes or not self._charges.get(scopes).counts_tokens:
            return None
        return wanted_tokens(body, self._settings.default_max_tokens)

    def _unreachable(self, charge: _Charge) -> _Charge | None:
        """The charge to decide with while the backend is unreachable (None: admit
        without limits), or 503 under ``fail_closed``."""
        if charge.local is not None:
            return charge.local
        if self._settings.on_redis_error == "fail_closed":
            raise DependencyUnavailableError(
                "Rate limits cannot be checked right now; try again shortly.",
                code="rate_limiter_unavailable",
                headers=retry_after_header(1),
            ) from None
        return None

    def settle(
        self, charge: _Charge, ticket: Ticket, count: object, prompt_used: object = None
    ) -> None:
        # an engine's bad usage: the reservation stands
        actual = None if count is None else believable(count)
        if prompt_used is not None and actual is not None and ticket.learns:
            used = believable(prompt_used)
            if used is not None:
                self._calibration.observe(charge.key_name, ticket.estimate, used)
        if charge.holds_slot:
            self._leased.pop(ticket.request_id, None)
        charged = ticket.reserved if actual is None else actual
        if charged and charge.counts_tokens:
            self._metrics.tokens_charged.labels(charge.key_name).inc(charged)
        try:
            charge.backend.settle(
                charge.scopes, ticket.request_id, ticket.reserved, actual, ticket.at
            )
        except StoreUnavailable:
            self._metrics.redis_errors.labels("ratelimit").inc()

    def _charge_of(self, scopes: Sequence[LimitScope]) -> _Charge:
        counts_tokens = any(s.limits.tpm is not None for s in scopes)
        holds_slot = any(s.limits.max_concurrent is not None for s in scopes)
        owner = scopes[0].owner
        local = None
        if self._local is not None:
            hint = self._settings.replicas_hint
            shares = tuple(LimitScope(s.key, _share(s.limits, hint), s.owner) for s in scopes)
            local = _Charge(shares, counts_tokens, holds_slot, owner, self._local, None)
        return _Charge(tuple(scopes), counts_tokens, holds_slot, owner, self._backend, local)


def _undo_if_admitted(
    charge: _Charge, pending: asyncio.Future[Decision], request_id: str, cost: Cost
) -> None:
    """A caller left (cancelled) just as its admission was decided, too late for the
    backend to see it leave: undo the admission now. No ticket would ever settle it,
    so its concurrency slot stayed taken for a whole lease and its reservation for
    the window (bug hunt). A decision still pending is the backend's to undo."""
    if pending.done() and not pending.cancelled() and pending.exception() is None:
        decided = pending.result()
        if decided.admitted:
            reserved = cost.prompt + cost.choices * decided.granted
            with contextlib.suppress(StoreUnavailable):
                charge.backend.settle(charge.scopes, request_id, reserved, 0, decided.at)


def _share(limits: Limits, replicas: int) -> Limits:
    """One replica's share of ``limits``: each divided by ``replicas``, rounded down, at
    least 1 (so the replicas together never exceed the limit, unless it is below their
    number)."""

    def share(limit: int | None) -> int | None:
        return None if limit is None else max(limit // replicas, 1)

    return Limits(share(limits.rpm), share(limits.tpm), share(limits.max_concurrent))
