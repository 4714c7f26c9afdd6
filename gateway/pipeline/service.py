"""The request pipeline for completions and embeddings:
auth → parse → admission (rate limits) → cache → route → forward/stream → settle.

Built once at start-up (:class:`CompletionService`) and called by the thin
routes in :mod:`gateway.http.completions`. Every request gets one
:class:`~gateway.pipeline.exchange.Exchange`, which owns what the request
acquires and releases it on every exit path; :meth:`CompletionService.handle`
makes sure it is closed, or hands the closing to the stream it returns.
Answers are domain results (:mod:`gateway.pipeline.results`); failures are
raised as :class:`GatewayError`.

A request to a rollout is served by the variant the planner chose for it: the key
needs permission for the rollout's name and is charged under it (its limits and
``model_limits`` for the rollout apply, whichever variant answers); the cache,
routing, timeouts and load gate are the variant's. Once permitted, its answers and
errors carry ``x-vgate-variant``, and a share of it may be copied to the rollout's
shadow (:mod:`gateway.rollouts.shadow`), sent once the primary has ended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from gateway.auth.authenticator import Authenticator, Principal
from gateway.cache.entry import Entry
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight, FlightFailed, Flights
from gateway.errors import (
    GatewayError,
    RateLimitError,
    UpstreamStatusError,
)
from gateway.observability.metrics import UNRESOLVED_MODEL, GatewayMetrics
from gateway.observability.telemetry import Telemetry
from gateway.observability.timeline import SERVER_TIMING
from gateway.pipeline.cache_flow import CacheFill, follow_events, hit_tokens
from gateway.pipeline.callers import authenticate, check_model_allowed
from gateway.pipeline.denials import DenialMemo
from gateway.pipeline.exchange import VARIANT_HEADER, Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pipeline.plan import (
    ParsedRequest,
    RequestPlanner,
    Route,
    with_output_cap,
)
from gateway.pipeline.priority import Place, PriorityTiers
from gateway.pipeline.results import Answer, EventStream, RawHeaders, Replay, Result
from gateway.pipeline.usage import (
    UsageTap,
    body_usage,
    client_wants_usage,
    usage_of,
    with_usage_requested,
)
from gateway.pipeline.watching import (
    attempt_context,
    cache_decision,
    note_key,
    watch_request,
    with_trailer,
)
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission
from gateway.rollouts.agreement import AgreementPair, StreamCollector, answer_text
from gateway.rollouts.contracts import NoObserver, VariantObserver
from gateway.rollouts.shadow import ShadowCopier
from gateway.rollouts.timing import EventTiming
from gateway.upstream.relay import BatchTap, StreamOutcome, relay_events

ENGINE_HEADER = b"x-vgate-engine"
_X_CACHE = b"x-cache"
MISS = b"MISS"
BYPASS = b"BYPASS"
_VARIANT = VARIANT_HEADER.encode()


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the service needs from the HTTP request besides its body."""

    request_id: str
    authorization: str | None = None
    session_id: str | None = None
    cache_control: str | None = None
    principal: Principal | None = None
    """The caller, when :meth:`CompletionService.caller` already answered it."""
    priority: str | None = None
    """``x-vgate-priority``: a later priority the client asks for (checked here)."""
    received: float = 0.0
    """When the route got the request (``perf_counter``; 0.0: when the service did)."""
    authed: float = 0.0
    """When the route had authenticated it (with ``principal``)."""
    explain: str | None = None
    """``x-vgate-explain``: the routing evidence is given when it is the admin key."""
    traceparent: str | None = None
    """The client's W3C ``traceparent`` (validated before any use)."""


class CompletionService:
    """Forwards validated completion requests to an engine chosen by the routing policy."""

    def __init__(
        self,
        planner: RequestPlanner,
        pool: EnginePool,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
        authenticator: Authenticator,
        admission: Admission,
        cache: ResponseCache,
        debug_headers: bool = False,
        observer: VariantObserver | None = None,
        shadows: ShadowCopier | None = None,
        tiers: PriorityTiers | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._tiers = tiers or PriorityTiers()
        self._telemetry = telemetry or Telemetry()
        self._observer = observer or NoObserver()
        self._shadows = shadows if shadows else None
        self._authenticator = authenticator
        self._admission = admission
        self._cache = cache
        self._planner = planner
        self._pool = pool
        self._forwarder = forwarder
        self._metrics = metrics
        self._debug_headers = debug_headers  # x-vgate-engine: the engine's id, never its URL
        self._denials = DenialMemo()

    async def handle(self, route: Route, raw: bytes, meta: RequestMeta) -> Result:
        """Answer one request; every failure is raised as a :class:`GatewayError`.

        An :class:`EventStream` answer owns the request's resources from then on:
        its ``close`` releases them. (The stages run inline here rather than in a
        helper coroutine: every coroutine level is walked again each time the
        request waits and resumes.)"""
        exchange = Exchange(route.label, self._pool, self._metrics)
        timeline = exchange.timeline
        if meta.received:
            timeline.begun, timeline.authed = meta.received, meta.authed
        if meta.explain is not None or self._telemetry.watching:
            watch_request(
                self._telemetry, exchange, meta.request_id, meta.explain, meta.traceparent
            )
        try:
            principal = meta.principal or self._authenticator.known(meta.authorization)
            if principal is None:  # unknown here, or refused: the full check says which
                principal = await self.authenticate(meta.authorization)
            if not timeline.authed:
                timeline.authed = exchange.clock()
            memo = principal.name if not principal.model_limits else None
            if memo is not None:
                self._denials.check(memo)  # over its request rate: 429 before any parsing
            planner = self._planner
            if planner.offloads(raw):
                parsed = await planner.parse_off_loop(route, raw, meta.session_id, principal)
            else:
                parsed = planner.parse(route, raw, meta.session_id, principal)
            exchange.model = parsed.rollout or parsed.model
            result = await self._admitted(exchange, route, parsed, principal, memo, meta)
            if exchange.variant is not None:
                result.headers.append((_VARIANT, exchange.variant.encode()))
        except GatewayError as exc:
            if isinstance(exc, UpstreamStatusError):
                exc.prompt_param = route.prompt_param
            exchange.failed(exc)
            exchange.close()
            raise
        except BaseException:  # the client left (cancelled) or a bug: release, keep the charge
            exchange.close()
            raise
        if not isinstance(result, EventStream):
            exchange.close()
        return result

    async def caller(self, route: Route, authorization: str | None) -> Principal:
        """Who is calling, from the headers alone, before the body is read: a wrong key
        (401) or a key over its request rate (429) is refused without the gateway ever
        holding its body. Refusals are counted like any other request's."""
        principal = self._authenticator.known(authorization)
        try:
            if principal is None:
                principal = await self.authenticate(authorization)
            if not principal.model_limits:
                self._denials.check(principal.name)
        except GatewayError as exc:
            self._metrics.observe_request(UNRESOLVED_MODEL, route.label, exc.status, 0.0)
            raise
        return principal

    @property
    def authenticator(self) -> Authenticator:
        return self._authenticator

    @property
    def flights(self) -> Flights:
        """Identical cache misses under way in this process (single flight)."""
        return self._cache.flights

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller, or AuthenticationError (401), counted in metrics."""
        return await authenticate(self._authenticator, self._metrics, authorization)

    async def _admitted(
        self,
        exchange: Exchange,
        route: Route,
        parsed: ParsedRequest,
        principal: Principal,
        memo: str | None,
        meta: RequestMeta,
    ) -> Result:
        """Permission, cache lookup and admission (one Redis round trip), then the answer:
        a replay, a follower's copy, or the engine's."""
        model = parsed.model
        asked = parsed.rollout or model  # what the key is allowed and charged for
        check_model_allowed(principal, asked, self._metrics)
        place = self._tiers.place(principal, meta.priority, parsed.body)
        if parsed.rollout is not None:
            exchange.variant = model
            exchange.observer = self._observer
        plan = self._cache.plan(
            route.cache_name, parsed.stream, model, parsed.body, principal.name, meta.cache_control
        )
        plan, lookup = self._cache.begin_lookup(model, plan)  # goes with the admission
        cost_body = parsed.body if route.generates else prompt_only(parsed.body, route)
        timeline = exchange.timeline
        timeline.limiting = exchange.clock()
        try:
            exchange.admit(await self._admission.admit(principal.scopes(asked), cost_body))
        except RateLimitError as exc:
            if memo is not None:
                self._denials.note(memo, exc)
            raise
        timeline.admitted = exchange.clock()
        plan, entry = await self._cache.finish_lookup(model, plan, lookup)
        timeline.looked_up = exchange.clock()
        watch = exchange.watch
        if watch is not None:
            note_key(exchange, principal.name)
            watch.note_cache(cache_decision(plan, entry is not None))
            watch.note_route(parsed.policy, parsed.affinity_key, meta.session_id is not None)
        if entry is not None:
            exchange.finished(hit_tokens(self._cache, entry))
            wants_usage = client_wants_usage(parsed.body)
            headers = [*exchange.ticket.raw_headers, *self._hit_headers(entry)]
            if watch is not None:
                watch.record.cache = "HIT"
            return Replay(entry, wants_usage, self._timed(exchange, headers))
        cap = exchange.ticket.output_cap
        if cap is not None and route.generates:  # the engine may generate what was reserved
            parsed = with_output_cap(parsed, route.cache_name == "chat", cap)
            if exchange.ticket.shortened:  # its answer may be shorter than another's:
                plan = _unshared(plan)  # it neither leads a flight nor fills the cache
        parsed = self._tiers.apply(parsed, place)
        # Follow an identical request in flight, or route and forward this one.
        if plan.bypassed:
            exchange.cache_status = BYPASS
        if plan.key is not None:
            if plan.lookup:
                flight = self._cache.flights.join(plan.key)
                if flight is not None:
                    exchange.follow(flight)
                    followed = await self._follow(exchange, parsed, flight)
                    if followed is not None:
                        return followed
                    exchange.leave_flight()
            exchange.lead(CacheFill(self._cache, parsed.model, plan))
            exchange.cache_status = MISS
        exchange.count_in_flight()
        pair = None
        if parsed.rollout is not None and self._shadows is not None:
            copy = self._shadows.copy(parsed.rollout, route.path, parsed.body, meta.request_id)
            exchange.shadow = copy  # sent once this request has ended (Exchange.close)
            pair = copy.pair if copy is not None else None
        if parsed.stream:
            return await self._stream(exchange, route, parsed, meta, pair, place)
        return await self._complete(exchange, route, parsed, meta, pair, place)

    async def _follow(
        self, exchange: Exchange, parsed: ParsedRequest, flight: Flight
    ) -> Result | None:
        """Answer from the identical request in flight; None if it failed before any answer."""
        model = parsed.model
        headers = self._timed(exchange, [*exchange.ticket.raw_headers, *self._hit_headers(None)])
        if not parsed.stream:
            try:
                entry = await flight.result()
            except FlightFailed:
                return None
            self._metrics.cache_joins.labels(model).inc()
            exchange.finished(hit_tokens(self._cache, entry))
            return Answer(entry.replay(), headers)
        await flight.wait(0)
        if flight.failed and not flight.batches:
            return None
        self._metrics.cache_joins.labels(model).inc()
        outcome = exchange.outcome = StreamOutcome()

        def done(entry: Entry) -> None:
            exchange.finished(hit_tokens(self._cache, entry))

        wants_usage = client_wants_usage(parsed.body)
        events = follow_events(flight, wants_usage, outcome, done)
        return EventStream(events, headers, exchange.close)

    async def _complete(
        self,
        exchange: Exchange,
        route: Route,
        parsed: ParsedRequest,
        meta: RequestMeta,
        pair: AgreementPair | None,
        place: Place,
    ) -> Answer:
        attempt = self._attempt(exchange, route, parsed, parsed.payload, meta, place)
        url, reply = await self._forwarder.complete(exchange, attempt)
        exchange.finished(body_usage(reply.body) if exchange.ticket.wants_usage else None)
        body = reply.body if parsed.rename is None else parsed.rename.inspect(reply.body)
        if exchange.watch is not None:
            exchange.watch.usage(usage_of(body))
        if exchange.fill is not None:  # what the client gets is what a hit replays
            exchange.fill.finish_json(body)
        if exchange.variant is not None:
            exchange.tokens = body_usage(body)
            if pair is not None:
                pair.primary(answer_text(body))
        return Answer(body, self._headers(exchange, url), reply.status)

    async def _stream(
        self,
        exchange: Exchange,
        route: Route,
        parsed: ParsedRequest,
        meta: RequestMeta,
        pair: AgreementPair | None,
        place: Place,
    ) -> EventStream:
        usage: UsageTap | None = None
        payload = parsed.payload
        fill = exchange.fill
        rollout = exchange.variant is not None
        watch = exchange.watch
        if exchange.ticket.wants_usage or fill is not None or rollout or watch is not None:
            # The engine must report usage; the client sees only what it asked for.
            usage = UsageTap(strip=not client_wants_usage(parsed.body))
            if usage.strip:
                payload = with_usage_requested(parsed.body)
        attempt = self._attempt(exchange, route, parsed, payload, meta, place)
        url, stream = await self._forwarder.open_stream(exchange, attempt)
        # Renamed first, then shared and stored with its usage event, then stripped.
        taps: list[BatchTap] = [t for t in (parsed.rename, fill, usage) if t is not None]
        collector = StreamCollector() if pair is not None else None
        if rollout:  # timed as it arrives; the primary's text kept for the shadow's
            exchange.timing = EventTiming(exchange.clock)
            taps.insert(0, exchange.timing)
            if collector is not None:
                taps.append(collector)
        outcome = exchange.outcome = StreamOutcome()

        def done() -> None:
            tokens = usage.tokens if usage is not None else None
            exchange.finished(tokens if exchange.ticket.wants_usage or fill is not None else None)
            if fill is not None:
                fill.finish_stream(tokens)
            if watch is not None and usage is not None:
                watch.usage(usage.usage)
            if rollout:
                exchange.tokens = tokens
                if pair is not None and collector is not None:
                    pair.primary(collector.text())

        events = relay_events(stream, outcome, exchange.clock, taps, done, route.prompt_param)
        if watch is not None and watch.evidence is not None:
            events = with_trailer(events, lambda: watch.trailer(exchange))
        return EventStream(events, self._headers(exchange, url), exchange.close)

    def _headers(self, exchange: Exchange, url: str) -> RawHeaders:
        headers = [*exchange.ticket.raw_headers]
        if self._debug_headers:
            headers.append((ENGINE_HEADER, self._pool.engine_id(url).encode()))
        if exchange.cache_status is not None and self._cache.discloses:
            headers.append((_X_CACHE, exchange.cache_status))
        return self._timed(exchange, headers)

    @staticmethod
    def _timed(exchange: Exchange, headers: RawHeaders) -> RawHeaders:
        """``headers`` plus ``Server-Timing`` and, when asked, the routing evidence."""
        headers.append((SERVER_TIMING, exchange.timeline.server_timing()))
        watch = exchange.watch
        if watch is not None and exchange.outcome is None:  # a stream's comes last
            explained = watch.explain_header(exchange)
            if explained is not None:
                headers.append(explained)
        return headers

    def _hit_headers(self, entry: Entry | None) -> RawHeaders:
        """``X-Cache: HIT`` and ``Age`` (0 for an answer shared while it is made), unless
        the cache is shared between keys: then they would tell one tenant of another's
        traffic, and answers carry neither."""
        if not self._cache.discloses:
            return []
        age = 0 if entry is None else max(0, int(time.time() - entry.created_at))
        return [(_X_CACHE, b"HIT"), (b"age", str(age).encode())]

    def _attempt(
        self,
        exchange: Exchange,
        route: Route,
        parsed: ParsedRequest,
        payload: bytes,
        meta: RequestMeta,
        place: Place,
    ) -> Attempt:
        traceparent, on_choice = None, None
        if meta.traceparent is not None or exchange.watch is not None:
            traceparent, on_choice = attempt_context(
                exchange, meta.traceparent, self._pool.engine_id
            )
        return Attempt(
            *(parsed.model, route.path, payload, meta.request_id, parsed.policy),
            parsed.affinity_key,
            key=place.key,
            priority=place.priority,
            traceparent=traceparent,
            on_choice=on_choice,
        )


def prompt_only(body: dict[str, object], route: Route) -> dict[str, object]:
    """What a request that generates nothing (embeddings) asks of a token limit, in the
    form the limiter reads: its input as the prompt and one token per input (the
    limiter's least output), settled to the answer's ``usage`` afterwards. vLLM's chat
    form (``messages`` instead of ``input``) is priced by its messages."""
    return {
        "prompt": body.get(route.prompt_field),
        "messages": body.get("messages"),
        "max_tokens": 1,
    }


def _unshared(plan: CachePlan) -> CachePlan:
    """``plan`` without leading a flight or filling the cache (a bypass, if it had a key)."""
    if plan.key is None:
        return plan
    return replace(plan, key=None, lookup=False, store=False, bypassed=True)
