"""The one object that owns everything a request acquires.

An :class:`Exchange` holds the rate-limit ticket, the engine slot (and the open
stream on it), the cache fill it leads or the flight it follows, the in-flight
gauge and the request's timers. :meth:`Exchange.close` releases all of it, once,
whichever way the request ends: answered, refused, failed at the engine, timed
out, or abandoned by its client while queued, while following another request
or while streaming. No other code settles a ticket or releases an engine slot. A
stream's engine hears its circuit breaker's verdict here too, once the stream has
ended (:meth:`Exchange.await_verdict`): its first event alone proves nothing.

How the ticket is settled follows how the request ended:

* :meth:`finished` (the answer is complete): the real usage, at once, so a
  client that sends its next request right away finds its slot free;
* :meth:`failed` (a :class:`GatewayError` before any answer): 0 tokens when
  no engine can have worked on it (refused before it was sent, no engine
  reachable, an engine's error status); its prompt when a stream's engine failed
  before its first event (it may have read the prompt, it wrote nothing); else the
  reservation: a request sent to an engine that then timed out or whose answer
  broke off or was refused (502) may have had the engine generate up to it (a
  tenant whose requests always time out would otherwise have every minute's budget
  back, and the engine's time free);
* closed without either (the client left, the stream broke): the reservation
  is kept, since the engine may have generated up to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.cache.singleflight import Flight
from gateway.errors import GatewayError, SlowReaderError, UpstreamError, UpstreamTimeoutError
from gateway.observability.metrics import UNRESOLVED_MODEL, GatewayMetrics
from gateway.observability.tallies import Tally
from gateway.observability.timeline import SERVER_TIMING, Timeline
from gateway.pipeline.cache_flow import CacheFill
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import FREE_PASS, Ticket
from gateway.rollouts.contracts import VariantObserver
from gateway.rollouts.shadow import ShadowCopy
from gateway.rollouts.timing import EventTiming
from gateway.upstream.relay import StreamOutcome
from gateway.upstream.transport import EventSource

if TYPE_CHECKING:
    from gateway.pipeline.watching import RequestWatch

_ENGINE_WORKED = (UpstreamTimeoutError, UpstreamError)
"""Failures after a request reached an engine that may have generated for it (a
timeout, an answer that broke off or was refused), by exact type: an engine's error
status (:class:`gateway.errors.UpstreamStatusError`) and the 503s are not."""

VARIANT_HEADER = "x-vgate-variant"
"""Names the rollout variant that answered (or failed) a request to a rollout."""


class Exchange:
    """One request's resources and outcome; see the module docstring."""

    __slots__ = (
        "_answered",
        "_closed",
        "_engine",
        "_failure",
        "_fill",
        "_flight",
        "_forwarded",
        "_in_flight",
        "_metrics",
        "_pool",
        "_stream",
        "_verdict_due",
        "cache_status",
        "clock",
        "label",
        "model",
        "observer",
        "outcome",
        "shadow",
        "started",
        "ticket",
        "timeline",
        "timing",
        "tokens",
        "variant",
        "watch",
    )

    def __init__(
        self,
        label: str,
        pool: EnginePool,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.label = label
        self.model = UNRESOLVED_MODEL
        self.ticket: Ticket = FREE_PASS
        self.cache_status: bytes | None = None
        """``X-Cache`` for an answer from an engine: MISS, BYPASS, or None (cache off)."""
        self.outcome: StreamOutcome | None = None
        """Set when the answer is a stream: how it ended, for metrics."""
        self.variant: str | None = None
        """The rollout variant serving the request (``model`` is then the rollout):
        set once the caller may use the rollout, so only such a caller's answers and
        errors name it (``x-vgate-variant``)."""
        self.observer: VariantObserver | None = None
        """Told how a request of a rollout variant ended, if it went to an engine."""
        self.shadow: ShadowCopy | None = None
        """A shadow copy of this request, sent once the request is closed."""
        self.timing: EventTiming | None = None
        """A rollout stream's event timing (its inter-token latency)."""
        self.tokens: int | None = None
        """A rollout answer's usage tokens, for ``vgate_variant_tokens_total``."""
        self.started = clock()
        self.timeline = Timeline(self.started)
        """The request's marks (``Server-Timing``, and traces, logs, evidence when on)."""
        self.watch: RequestWatch | None = None
        """Set when the request is followed (:mod:`gateway.pipeline.watching`)."""
        self.clock = clock
        """The request's clock (``perf_counter``): a plain attribute, read several times
        per request (a property would be one more call each time)."""
        self._pool = pool
        self._metrics = metrics
        self._engine: str | None = None
        self._stream: EventSource | None = None
        self._fill: CacheFill | None = None
        self._flight: Flight | None = None
        self._in_flight: Tally | None = None
        self._failure: GatewayError | None = None
        self._forwarded = False
        self._answered = False
        self._closed = False
        self._verdict_due = False

    # -- what the request acquires -------------------------------------------------

    def admit(self, ticket: Ticket) -> None:
        self.ticket = ticket

    def take_engine(self, url: str) -> None:
        """Hold a slot on the engine at ``url`` (one at a time)."""
        self.drop_engine()
        self._pool.acquire(url)
        self._engine = url

    def hold_stream(self, stream: EventSource) -> None:
        """Own the open stream on the held engine: closed with the engine slot."""
        self._stream = stream

    def await_verdict(self) -> None:
        """The held stream has begun: its engine's circuit breaker hears how it ended
        when the request closes (:meth:`StreamOutcome.engine_failed`), not before: an
        engine that starts every stream and then breaks off is failing."""
        self._verdict_due = True

    def drop_engine(self) -> None:
        """Close the stream on the held engine, if any, and free its slot."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        url, self._engine = self._engine, None
        if url is not None:
            self._pool.release(url)

    def lead(self, fill: CacheFill) -> None:
        """Own the cache fill (and so the flight) this request leads."""
        self._fill = fill

    def follow(self, flight: Flight) -> None:
        """Follow ``flight``: this request's place in it is kept from now until it
        leaves (batches no follower still needs can then be forgotten)."""
        self._flight = flight
        flight.positions[self] = 0

    def leave_flight(self) -> None:
        """Stop following (the leader failed before answering: this request goes itself)."""
        flight, self._flight = self._flight, None
        if flight is not None:
            flight.leave(self)

    def count_in_flight(self) -> None:
        """Count the request in ``vgate_requests_in_flight`` until it closes."""
        self._forwarded = True  # the request goes to an engine from here on
        if self._in_flight is None:
            self._in_flight = self._metrics.in_flight_of(self.model)
            self._in_flight.inc()

    # -- how it ends ---------------------------------------------------------------

    def finished(self, tokens: int | None, prompt_used: int | None = None) -> None:
        """The answer is complete: settle the ticket now with ``tokens`` (None: keep
        the reservation); ``prompt_used``, the engine's count of the prompt, teaches
        the key's prompt calibration (when the ticket :attr:`~Ticket.learns`)."""
        self._answered = True
        self.ticket.settle(tokens, prompt_used)

    def failed(self, error: GatewayError) -> None:
        """The request ends with ``error`` (no answer was produced): nothing is charged.
        The error's answer carries the rate-limit and cache headers."""
        self._failure = error
        error.headers.update(self.ticket.headers)
        error.headers[SERVER_TIMING.decode()] = self.timeline.server_timing().decode()
        if self.watch is not None:
            self.watch.explain_error(self, error)
        if self.cache_status is not None:
            error.headers["X-Cache"] = self.cache_status.decode()
        if self.variant is not None:
            error.headers[VARIANT_HEADER] = self.variant

    def close(self) -> None:
        """Release everything the request holds; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._verdict_due:
            self._give_verdict()
        self.drop_engine()
        failure = self._failure  # (no call on the usual path: answered, or the client left)
        charge = None if failure is None else self._failure_charge(failure)
        self.ticket.settle(charge)
        fill, self._fill = self._fill, None
        if fill is not None:
            fill.fail()  # no-op once it landed
        self.leave_flight()
        if self._in_flight is not None:
            self._in_flight.dec()
            self._in_flight = None
        self._record()
        shadow, self.shadow = self.shadow, None
        if shadow is not None:
            if charge == 0:  # charged nothing (an engine refused it): nor is its copy
                shadow.drop()
            else:
                shadow.release()  # the primary has ended: its copy may go now
        watch, self.watch = self.watch, None
        if watch is not None:
            watch.closed(self, self._failure, self.clock())

    def _give_verdict(self) -> None:
        """Tell the stream's engine's breaker how its stream ended: a success once it
        completed (or the engine ended it with an error event of its own), a failure
        when the engine broke it off or sent an error event with a 5xx ``code`` (its
        own server error). A stream its client left says nothing either way
        (a success then would wipe out the failures counted meanwhile)."""
        url, outcome = self._engine, self.outcome
        if url is None or outcome is None:
            return
        if outcome.engine_failed() or outcome.engine_error_status >= 500:
            self._pool.record_failure(url)
        elif outcome.completed or outcome.engine_error:
            self._pool.record_success(url)

    def _failure_charge(self, failure: GatewayError) -> int | None:
        """What a request that failed with ``failure`` is charged: 0 where no engine
        can have worked on it, its prompt where one failed before writing any of the
        answer, else None (the reservation)."""
        if not self._forwarded or type(failure) not in _ENGINE_WORKED:
            return 0
        # It failed before the engine wrote any of it: the prompt may have been read.
        return self.ticket.prompt if failure.before_output else None

    @property
    def fill(self) -> CacheFill | None:
        """The cache fill this request leads, if any."""
        return self._fill

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def holds_engine(self) -> bool:
        return self._engine is not None

    def _record(self) -> None:
        metrics, model, label = self._metrics, self.model, self.label
        variant = self.variant or ""
        elapsed = self.clock() - self.started
        if self._failure is not None:
            status = self._failure.status
            metrics.observe_request(model, label, status, elapsed, variant)
            self._observe(status >= 500, None)
            return
        outcome = self.outcome
        if outcome is None:
            if self._answered:  # otherwise the client left before the answer
                metrics.observe_request(model, label, 200, elapsed, variant)
                self._observe(False, elapsed)  # a JSON answer comes whole: its TTFT
            return
        ttft = None
        if outcome.first_chunk_at is not None:
            ttft = outcome.first_chunk_at - self.started
            metrics.time_to_first_token.labels(model, label, variant).observe(ttft)
        error = outcome.error
        # A client cut for falling behind a shared stream: the engine answered (the
        # client's side, counted as one that left), not a failure of its stream.
        failed = error is not None and not isinstance(error, SlowReaderError)
        if failed:  # a deadline (idle_s, total_s) passed, or the engine broke
            late = isinstance(error, UpstreamTimeoutError)
            metrics.upstream_errors.labels(model, "timeout" if late else "stream_interrupted").inc()
        elif not outcome.completed:
            metrics.client_disconnects.labels(model).inc()
        chunks, first = outcome.chunks, outcome.first_chunk_at  # status page: mean chunk gap
        span = None if first is None or chunks < 2 else self.started + elapsed - first
        itl = None if span is None else span / (chunks - 1)
        metrics.live.stream(variant or model, ttft, itl, failed)
        metrics.observe_request(model, label, 200, elapsed, variant)
        self._observe(failed, ttft)

    def _observe(self, failed: bool, ttft: float | None) -> None:
        """A rollout variant's request that went to an engine: its inter-token latency
        and tokens by variant, and the rollout controller's observation."""
        variant, observer = self.variant, self.observer
        if variant is None or observer is None or not self._forwarded:
            return
        metrics, model, label = self._metrics, self.model, self.label
        itl = self.timing.mean_gap_s() if self.timing is not None else None
        if itl is not None:
            metrics.inter_token_latency.labels(model, label, variant).observe(itl)
        if self.tokens is not None:
            metrics.variant_tokens.labels(model, label, variant).inc(self.tokens)
        observer.observe(model, variant, failed=failed, ttft_s=ttft, itl_s=itl)
