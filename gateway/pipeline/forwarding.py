"""Getting one request answered by an engine: choice, failover, timeouts, breaker signals.

:class:`Forwarder` tries engines one at a time, as the routing policy picks them
from a fresh snapshot (at most ``1 + upstream.retries`` attempts). A request
moves on to the next engine only while nothing has been sent to its client and
the engine cannot have answered it: the connection failed before a response head,
the engine answered 5xx, or its stream broke (the connection closed or could not
be read) before the first event. Timeouts (:mod:`gateway.upstream.deadlines`) and
4xx are answered, not retried; so is an answer the gateway cannot relay as it is
(a stream request answered with JSON or a status other than 200, a stream that
ended before any event, a 2xx labelled JSON that is not JSON): a 502, never sent
to another engine, which would run the same generation twice.

Every outcome feeds the engine's circuit breaker, the failures above as much as a
5xx. A stream's verdict is how it ended, given when its request closes
(:meth:`Exchange.await_verdict`): a stream whose engine broke off or stalled after
its first event counts against it as a failed answer does; one that completed, or
whose client left, or that the engine ended with an error event of its own (a
prompt too long), counts for it (:meth:`StreamOutcome.engine_failed`).

The engine gets a request id of the gateway's own (``X-Request-Id: vgate-<hex>``: a
random prefix per gateway process and a counter; drawing random bytes for every
request cost 2% of the gateway's CPU), never the client's: vLLM uses that header
as its request id, so two tenants choosing the same one would collide in the engine.
The client's id is still echoed to it (:mod:`gateway.http.request_id`), and the pair
is logged at debug level.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from gateway.config.priority import DEFAULT_PRIORITY
from gateway.errors import (
    GatewayError,
    ModelUnavailableError,
    NoEngineAvailableError,
    OverloadedError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    retry_after,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.opaque_ids import OpaqueIds
from gateway.pipeline.answer_checks import checked_json
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.watching import begin_attempt, end_attempt
from gateway.pool.engine_pool import EnginePool
from gateway.pool.shedding import ANONYMOUS_KEY, LoadGate
from gateway.routing.policies import EndpointView, RoutingPolicy
from gateway.upstream.deadlines import Deadlines, Limit
from gateway.upstream.transport import (
    EngineBusy,
    EngineUnreachable,
    EventSource,
    StreamWithoutEvents,
    Upstream,
    UpstreamReply,
)

log = logging.getLogger("vgate.forwarding")


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class Attempt:
    """What the forwarder needs to know about one request."""

    model: str
    path: str
    payload: bytes
    request_id: str
    policy: RoutingPolicy
    affinity_key: bytes | None
    content_type: str | None = None
    """The payload's Content-Type when it is not JSON (a multipart form)."""
    key: str = ANONYMOUS_KEY
    """The caller's key name: the admission queue takes turns between keys."""
    priority: int = DEFAULT_PRIORITY
    """Its place in the admission queue (vLLM's scale: lower is admitted earlier)."""
    traceparent: str | None = None
    """The client's valid ``traceparent``, passed on as it is when tracing is off."""
    on_choice: Callable[[Sequence[EndpointView]], None] | None = None
    """Told the candidates of the first choice (routing evidence, when asked)."""
    json_object: bool = False
    """Its 2xx answer must be a JSON object (the completion and Responses routes, whose
    answers are relayed as ``application/json``): anything else is a 502."""
    parsed_whole: bool = False
    """Its 2xx JSON answer is checked by parsing it whole, whatever its size (the
    Responses route reads it whole anyway, from ``reply.answer``): a large one that is
    not JSON is the engine's failure like a small one, never the route's to find."""


class Forwarder:
    def __init__(
        self,
        pool: EnginePool,
        upstream: Upstream,
        metrics: GatewayMetrics,
        retries: int,
        deadlines: Mapping[str, Deadlines],
        default_deadlines: Deadlines,
        gate: LoadGate | None = None,
        budget: RetryBudget | None = None,
    ) -> None:
        self._pool = pool
        self._upstream = upstream
        self._metrics = metrics
        self._attempts = 1 + retries
        self._deadlines = deadlines
        self._default = default_deadlines
        self._gate = gate
        self._budget = budget or RetryBudget(0.2, 20)
        self._ids = OpaqueIds("vgate-")  # vLLM names its answers after it: no counter

    def _headers(self, attempt: Attempt) -> dict[str, str]:
        """The headers of one request to the engines, with a fresh id of the gateway's
        own (the same for every engine tried) and the client's trace context, if any."""
        engine_request_id = self._ids.next()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s goes to the engines as %s", attempt.request_id, engine_request_id)
        headers = {"Content-Type": "application/json", "X-Request-Id": engine_request_id}
        if attempt.traceparent is not None:
            headers["traceparent"] = attempt.traceparent
        return headers

    async def _queue(self, exchange: Exchange, attempt: Attempt) -> None:
        """Wait for the load gate (the admission queue), timed for ``Server-Timing``."""
        if self._gate is None:
            return
        timeline = exchange.timeline
        timeline.queued = exchange.clock()
        await self._gate.enter(attempt.model, attempt.key, attempt.priority)
        timeline.queue_left = exchange.clock()

    def engine_headers(self, url: str, headers: Mapping[str, str]) -> Mapping[str, str]:
        """``headers`` plus the key the engine at ``url`` demands, if any: every request
        to an engine takes its headers from here (never from the client's)."""
        return self._pool.credentials.headers(url, headers)

    def deadlines(self, model: str) -> Deadlines:
        return self._deadlines.get(model, self._default)

    async def complete(self, exchange: Exchange, attempt: Attempt) -> tuple[str, UpstreamReply]:
        """The engine that answered and its 2xx reply; any failure is raised. Each try
        holds its engine's slot in ``exchange`` while it waits."""
        await self._queue(exchange, attempt)
        headers = self._headers(attempt)
        if attempt.content_type is not None:
            headers["Content-Type"] = attempt.content_type
        limits = self.deadlines(attempt.model)
        failed: UpstreamStatusError | None = None
        busy: OverloadedError | None = None
        for url in self.candidates(attempt):
            exchange.take_engine(url)
            mark = begin_attempt(exchange, url, self._engine_id(exchange, url), headers)
            try:
                reply = await self._upstream.post(
                    url + attempt.path, attempt.payload, self.engine_headers(url, headers), limits
                )
            except EngineBusy:
                end_attempt(exchange, mark, failure="busy")
                busy = self._busy(attempt.model)
                continue
            except EngineUnreachable:
                end_attempt(exchange, mark, failure="connect")
                self._unreachable(attempt.model, url)
                continue
            except UpstreamTimeoutError:
                end_attempt(exchange, mark, failure="timeout")
                self._pool.record_failure(url)
                self._metrics.upstream_errors.labels(attempt.model, "timeout").inc()
                raise UpstreamTimeoutError(
                    f"the engine did not answer within {limits.answer_name()}"
                ) from None
            except GatewayError:  # the engine failed while answering (connection broke)
                end_attempt(exchange, mark, failure="interrupted")
                self._pool.record_failure(url)
                self._metrics.upstream_errors.labels(attempt.model, "interrupted").inc()
                raise
            finally:
                exchange.drop_engine()
            if reply.status >= 500:  # the engine's fault: another engine may do better
                end_attempt(exchange, mark, reply.status, "status")
                self._pool.record_failure(url)
                self._metrics.upstream_errors.labels(attempt.model, "status").inc()
                failed = self._status_error(reply)
                continue
            if reply.status < 300 and (
                attempt.json_object or reply.content_type == "application/json"
            ):
                refused = checked_json(reply, attempt.json_object, attempt.parsed_whole)
                if refused is not None:  # it answered: never sent to another engine
                    end_attempt(exchange, mark, reply.status, "status")
                    self._pool.record_failure(url)
                    self._metrics.upstream_errors.labels(attempt.model, "status").inc()
                    raise UpstreamError(f"engine answered badly: {refused}")
            end_attempt(exchange, mark, reply.status, answered=True)
            self._pool.record_success(url)
            if reply.status >= 400:
                self._metrics.upstream_errors.labels(attempt.model, "status").inc()
                raise self._status_error(reply)
            return url, reply
        raise failed or busy or self._unavailable(attempt.model)

    async def open_stream(self, exchange: Exchange, attempt: Attempt) -> tuple[str, EventSource]:
        """The engine streaming the answer, its first events already received.

        The engine's slot and the open stream stay held by ``exchange``, which
        releases them when the request closes.
        """
        await self._queue(exchange, attempt)
        headers = self._headers(attempt)
        limits = self.deadlines(attempt.model)
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + limits.total_s if limits.total_s else None
        failed: GatewayError | None = None
        for url in self.candidates(attempt):
            exchange.take_engine(url)
            first_deadline = loop.time() + limits.ttft_s if limits.ttft_s else None
            if total_deadline is not None:
                first_deadline = min(first_deadline or total_deadline, total_deadline)
            stream: EventSource | None = None
            mark = begin_attempt(exchange, url, self._engine_id(exchange, url), headers)
            try:
                async with asyncio.timeout_at(first_deadline):
                    stream = await self._upstream.open_stream(
                        url + attempt.path,
                        attempt.payload,
                        self.engine_headers(url, headers),
                        limits,
                    )
                    exchange.hold_stream(stream)
                    await stream.prime()  # nothing reaches the client before the first event
            except EngineBusy:
                end_attempt(exchange, mark, failure="busy")
                exchange.drop_engine()
                failed = failed or self._busy(attempt.model)
                continue
            except EngineUnreachable:
                end_attempt(exchange, mark, failure="connect")
                exchange.drop_engine()
                self._unreachable(attempt.model, url)
                continue
            except StreamWithoutEvents as exc:  # it answered, with nothing to relay
                end_attempt(exchange, mark, 200, "status")
                exchange.drop_engine()
                self._pool.record_failure(url)
                self._metrics.upstream_errors.labels(attempt.model, "status").inc()
                empty = UpstreamError(f"engine answered badly: {exc}")
                empty.before_output = True
                raise empty from None
            except TimeoutError:
                end_attempt(exchange, mark, failure="timeout")
                exchange.drop_engine()
                self._pool.record_failure(url)
                self._metrics.upstream_errors.labels(attempt.model, "timeout").inc()
                late = UpstreamTimeoutError(_first_event_timeout(limits, total_deadline))
                late.before_output = True
                raise late from None
            except GatewayError as exc:
                exchange.drop_engine()
                if isinstance(exc, UpstreamStatusError):  # its text may echo the key
                    exc.secrets = self._pool.credentials.secrets
                timed_out = isinstance(exc, UpstreamTimeoutError)
                kind = (
                    "timeout" if timed_out else "status" if stream is None else "stream_interrupted"
                )
                self._metrics.upstream_errors.labels(attempt.model, kind).inc()
                end_attempt(exchange, mark, exc.status if stream is None else 200, kind)
                if exc.status >= 500:
                    self._pool.record_failure(url)
                if isinstance(exc, UpstreamStatusError) and exc.status >= 500:
                    failed = exc
                    continue
                if stream is not None and type(exc) is UpstreamError:
                    # Its stream broke after the head but before the first event (an
                    # engine that died during prefill): nothing reached the client.
                    exc.before_output = True
                    failed = exc
                    continue
                if timed_out:  # the head or the first event not within first_s
                    limit: Limit = "ttft_s" if limits.ttft_s else "idle_s"
                    late = UpstreamTimeoutError(_no_first_event(limits, limit))
                    late.before_output = True
                    raise late from None
                raise
            end_attempt(exchange, mark, 200, answered=True)
            exchange.await_verdict()  # how the stream ends is its engine's verdict
            stream.deadline = total_deadline
            return url, stream
        raise failed or self._unavailable(attempt.model)

    def _status_error(self, reply: UpstreamReply) -> UpstreamStatusError:
        """The error of an engine's error answer, which never shows the engines' keys
        (an engine may echo the request's ``Authorization`` in its message)."""
        error = UpstreamStatusError(
            reply.status, reply.body, reply.content_type, reply.retry_after, reply.retry_after_ms
        )
        error.secrets = self._pool.credentials.secrets
        return error

    def candidates(self, attempt: Attempt) -> Iterator[str]:
        """Engines to try, one at a time, for one request (at most ``1 + retries``).

        Lazy: the next engine is chosen only after the previous one failed, from a
        fresh snapshot, so a request that succeeds first time consults the policy once.
        """
        tried: list[str] = []
        self._budget.deposit()
        for number in range(self._attempts):
            views = self._pool.snapshot(attempt.model, exclude=tried)
            if not views:
                return
            if number:
                if not self._budget.withdraw():
                    self._metrics.retry_budget_exhausted.labels(attempt.model).inc()
                    return
                self._metrics.retries.labels(attempt.model).inc()
            if not number and attempt.on_choice is not None:
                attempt.on_choice(views)
            url = attempt.policy.choose(views, attempt.affinity_key).url
            tried.append(url)
            yield url

    def _engine_id(self, exchange: Exchange, url: str) -> str | None:
        """The engine's short id, only when the request is followed (else unused)."""
        return self._pool.engine_id(url) if exchange.watch is not None else None

    def _unavailable(self, model: str) -> GatewayError:
        """503 with ``Retry-After``: when an engine may be tried again (an open breaker
        stays open for ``upstream.breaker_cooldown_s``; retrying sooner cannot help);
        503 ``model_unavailable`` without one when every engine of the model has failed
        for good (read here, off the path of a request that an engine answers)."""
        if self._pool.failed_for_good(model):
            return ModelUnavailableError(model)
        return NoEngineAvailableError(
            f"no engine for model `{model}` could be reached",
            headers=retry_after(self._pool.retry_in(model)),
        )

    def _busy(self, model: str) -> OverloadedError:
        """503 ``overloaded``: no connection to the engine came free within
        ``connect_s`` (:class:`EngineBusy`); its health and breaker are left alone."""
        self._metrics.upstream_errors.labels(model, "busy").inc()
        return OverloadedError(
            f"Every connection the gateway may open to the engines of `{model}` is in "
            "use (upstream.max_connections_per_engine); retry shortly.",
            headers=retry_after(1),
        )

    def _unreachable(self, model: str, url: str) -> None:
        self._pool.set_health(url, False)
        self._pool.record_failure(url)
        self._metrics.upstream_errors.labels(model, "connect").inc()


class RetryBudget:
    """Failovers as a share of traffic: each request adds ``ratio`` of a token (up to
    ``burst``), each failover takes one. A dying engine then costs at most that much
    extra load on the others, instead of doubling it."""

    def __init__(self, ratio: float, burst: int) -> None:
        self._ratio = ratio
        self._burst = float(burst)
        self._tokens = float(burst)

    def deposit(self) -> None:
        self._tokens = min(self._burst, self._tokens + self._ratio)

    def withdraw(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def _first_event_timeout(limits: Deadlines, total_deadline: float | None) -> str:
    """What the 504 says when the first-event deadline (``ttft_s``, or ``total_s`` when
    that comes first) passed before the stream's first event."""
    if limits.ttft_s and (total_deadline is None or limits.ttft_s <= (limits.total_s or 0)):
        return _no_first_event(limits, "ttft_s")
    return f"the engine did not finish within {limits.named('total_s')}"


def _no_first_event(limits: Deadlines, limit: Limit) -> str:
    return f"the engine did not start answering within {limits.named(limit)}"
