"""Following one request for its trace, its log line and its routing evidence.

The pipeline's side of :mod:`gateway.observability`: :func:`watch_request` gives an
:class:`~gateway.pipeline.exchange.Exchange` a :class:`RequestWatch` only when
someone reads it (tracing or the JSON request log on, or the request's
``x-vgate-explain`` carrying the admin key); otherwise the request keeps its bare
:class:`~gateway.observability.timeline.Timeline` marks, which only feed
``Server-Timing``. The forwarder reports each upstream attempt through
:func:`begin_attempt` / :func:`end_attempt`, and the exchange hands itself to
:meth:`RequestWatch.closed` once, when it closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.cache.response_cache import CachePlan
from gateway.errors import GatewayError
from gateway.observability.explain import EXPLAIN_HEADER, Evidence
from gateway.observability.telemetry import Telemetry
from gateway.observability.timeline import AttemptMark, RequestRecord
from gateway.observability.tracing import RequestTrace, parse_traceparent
from gateway.routing.policies import EndpointView

if TYPE_CHECKING:
    from gateway.pipeline.exchange import Exchange

_POLICY_NAMES = {
    "LeastOutstanding": "least_outstanding",
    "RoundRobin": "round_robin",
    "PrefixAffinity": "prefix_affinity",
}


class RequestWatch:
    """One followed request: its record, its trace (tracing on) and its evidence (asked)."""

    __slots__ = ("evidence", "record", "telemetry", "trace")

    def __init__(self, telemetry: Telemetry, record: RequestRecord) -> None:
        self.telemetry = telemetry
        self.record = record
        self.trace: RequestTrace | None = None
        self.evidence: Evidence | None = None

    def note_choice(self, views: Sequence[EndpointView], engine_id: Callable[[str], str]) -> None:
        """The candidates of the first choice and their load (evidence only)."""
        evidence = self.evidence
        if evidence is None or evidence.candidates:
            return
        evidence.candidates = [
            {
                "engine": engine_id(v.url),
                "healthy": v.healthy,
                "in_flight": v.in_flight,
                "waiting": v.waiting,
                "kv_cache_usage": v.kv_cache_usage,
                "load": v.load,
            }
            for v in views
        ]

    def note_route(self, policy: object, affinity_key: bytes | None, session: bool) -> None:
        evidence = self.evidence
        if evidence is None:
            return
        name = type(policy).__name__
        evidence.policy = _POLICY_NAMES.get(name, name)
        uses = bool(getattr(policy, "wants_affinity_key", False))
        evidence.affinity = {
            "policy_uses_affinity": uses,
            "key": "session" if uses and session else "prompt_prefix" if uses else None,
            "applied": affinity_key is not None,
        }

    def note_cache(self, decision: dict[str, Any]) -> None:
        if self.evidence is not None:
            self.evidence.cache = decision

    def explain_header(self, exchange: Exchange) -> tuple[bytes, bytes] | None:
        """``x-vgate-explain`` for an answer whose head goes out now, if it was asked."""
        evidence = self._filled(exchange)
        if evidence is None:
            return None
        return EXPLAIN_HEADER, evidence.render(exchange.timeline)

    def explain_error(self, exchange: Exchange, error: GatewayError) -> None:
        header = self.explain_header(exchange)
        if header is not None:
            error.headers[header[0].decode()] = header[1].decode()

    def trailer(self, exchange: Exchange) -> bytes | None:
        """The evidence as a stream's last SSE comment, if it was asked."""
        evidence = self._filled(exchange)
        return None if evidence is None else evidence.trailer(exchange.timeline)

    def _filled(self, exchange: Exchange) -> Evidence | None:
        evidence = self.evidence
        if evidence is None:
            return None
        evidence.limits = {
            name.decode(): value.decode()
            for name, value in exchange.ticket.raw_headers
            if name.startswith(b"x-ratelimit-remaining")
        }
        if exchange.variant is not None:
            evidence.rollout, evidence.variant = exchange.model, exchange.variant
        return evidence

    def closed(self, exchange: Exchange, failure: GatewayError | None, now: float) -> None:
        """The request ended: fill its record, end its trace, write its log line."""
        record = self.record
        record.model = exchange.model
        record.variant = exchange.variant
        if exchange.cache_status is not None and record.cache is None:
            record.cache = exchange.cache_status.decode()
        if failure is not None:
            record.status = failure.status
            record.error = failure.code or failure.error_type
        elif not record.status:
            record.status = 200
        outcome = exchange.outcome
        if outcome is not None:
            record.stream = True
            record.first_token = outcome.first_chunk_at or 0.0
            if outcome.error is not None and failure is None:
                record.error = outcome.error.code or outcome.error.error_type
        for attempt in reversed(exchange.timeline.attempts or ()):
            if attempt.failure is None:
                record.engine, record.engine_url = attempt.engine, attempt.url
                break
        timeline = exchange.timeline
        if self.trace is not None:
            self.trace.finish(record, timeline, now)
        log = self.telemetry.request_log
        if log is not None:
            log.write(record, timeline, now - timeline.begun)

    def usage(self, usage: Any) -> None:
        """An answer's ``usage`` object (input and output tokens)."""
        if not isinstance(usage, dict):
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int):
            self.record.input_tokens = prompt
        if isinstance(completion, int):
            self.record.output_tokens = completion


def watch_request(
    telemetry: Telemetry,
    exchange: Exchange,
    request_id: str,
    explain: str | None,
    traceparent: str | None,
) -> None:
    """Follow the request in ``exchange`` if anything reads it (see the module docstring)."""
    explained = explain is not None and telemetry.explain.admits(explain)
    if not explained and not telemetry.watching:
        return
    exchange.timeline.attempts = []
    watch = RequestWatch(telemetry, RequestRecord(request_id, exchange.label))
    if telemetry.tracer is not None:
        watch.trace = telemetry.tracer.begin(exchange.timeline, traceparent)
    if explained:
        watch.evidence = Evidence()
    exchange.watch = watch


def note_key(exchange: Exchange, key: str) -> None:
    watch = exchange.watch
    if watch is not None:
        watch.record.key = key


def begin_attempt(
    exchange: Exchange, url: str, engine_id: str | None, headers: MutableMapping[str, str]
) -> AttemptMark | None:
    """Mark an attempt's start; when the request is followed, its :class:`AttemptMark`
    (and, traced, its span, whose ``traceparent`` goes into ``headers``)."""
    timeline = exchange.timeline
    now = exchange.clock()
    if not timeline.upstream_started:
        timeline.upstream_started = now
    if timeline.attempts is None:
        return None
    mark = AttemptMark(url, engine_id or "", now)
    timeline.attempts.append(mark)
    watch = exchange.watch
    if watch is not None and watch.trace is not None:
        headers["traceparent"] = watch.trace.attempt_started(mark)
    return mark


def end_attempt(
    exchange: Exchange,
    mark: AttemptMark | None,
    status: int | None = None,
    failure: str | None = None,
    answered: bool = False,
) -> None:
    """Mark an attempt's end (``answered``: its first byte is the answer's)."""
    now = exchange.clock()
    if answered:
        exchange.timeline.upstream_first_byte = now
    if mark is None:
        return
    mark.ended = now
    mark.status = status
    mark.failure = failure
    if answered:
        mark.first_byte = now


def attempt_context(
    exchange: Exchange, traceparent: str | None, engine_id: Callable[[str], str]
) -> tuple[str | None, Callable[[Sequence[EndpointView]], None] | None]:
    """What an :class:`~gateway.pipeline.forwarding.Attempt` carries for telemetry: the
    client's ``traceparent`` to pass on as it is (only when valid and the request is not
    traced: a traced one sends its own attempt span's), and the hook that notes the
    candidates (only when evidence was asked)."""
    watch = exchange.watch
    traced = watch is not None and watch.trace is not None
    if traced or (traceparent is not None and parse_traceparent(traceparent) is None):
        traceparent = None
    if watch is None or watch.evidence is None:
        return traceparent, None
    noted = watch

    def on_choice(views: Sequence[EndpointView]) -> None:
        noted.note_choice(views, engine_id)

    return traceparent, on_choice


def cache_decision(plan: CachePlan, hit: bool) -> dict[str, Any]:
    """The cache's decision for one request, as evidence."""
    if hit:
        return {"status": "HIT", "key": True}
    if plan.key is None:
        return {"status": "BYPASS" if plan.bypassed else "off", "key": False}
    return {"status": "MISS", "key": True, "lookup": plan.lookup, "store": plan.store}


def with_trailer(
    events: AsyncIterator[bytes], last: Callable[[], bytes | None]
) -> AsyncIterator[bytes]:
    """``events``, then ``last()`` (the evidence comment) once they end cleanly."""

    async def relayed() -> AsyncIterator[bytes]:
        async for batch in events:
            yield batch
        tail = last()
        if tail is not None:
            yield tail

    return relayed()
