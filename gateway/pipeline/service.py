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

from dataclasses import replace

from gateway.auth.authenticator import Authenticator, Principal
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flights
from gateway.errors import (
    GatewayError,
    RateLimitError,
    UpstreamStatusError,
)
from gateway.observability.metrics import UNRESOLVED_MODEL, GatewayMetrics
from gateway.observability.telemetry import Telemetry
from gateway.pipeline.cache_flow import CacheFill, hit_tokens
from gateway.pipeline.callers import authenticate, check_model_allowed
from gateway.pipeline.denials import DenialMemo
from gateway.pipeline.engine_answers import EngineAnswers
from gateway.pipeline.exchange import VARIANT_HEADER, Exchange
from gateway.pipeline.forwarding import Forwarder
from gateway.pipeline.plan import (
    ParsedRequest,
    RequestPlanner,
    Route,
    asks_at_most,
    embedding_priced,
    output_capped,
    with_output_cap,
)
from gateway.pipeline.priority import PriorityTiers
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import EventStream, Result
from gateway.pipeline.usage import (
    client_wants_usage,
)
from gateway.pipeline.watching import (
    cache_decision,
    note_key,
    watch_request,
)
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission
from gateway.rollouts.contracts import NoObserver, VariantObserver
from gateway.rollouts.shadow import ShadowCopier

MISS = b"MISS"
BYPASS = b"BYPASS"
_VARIANT = VARIANT_HEADER.encode()


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
        self._shared_cache = not cache.discloses  # one key's answers serve every key
        self._planner = planner
        self._pool = pool
        self._metrics = metrics
        self._answers = EngineAnswers(
            forwarder, pool, cache, metrics, debug_headers, planner.engine_names
        )
        self._denials = DenialMemo(metrics=metrics)

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
                # over its request rate: 429 before any parsing
                self._denials.check(memo, principal.limits.rpm)
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

    def operator_explaining(self, explain: str | None, authorization: str | None) -> str | None:
        """The admin key, when this is the operator's own request for routing evidence
        (``x-vgate-explain: 1`` with the admin key as bearer; see
        :mod:`gateway.observability.explain`); None otherwise."""
        return self._telemetry.explain.bearer(explain, authorization)

    async def caller(self, route: Route, authorization: str | None) -> Principal:
        """Who is calling, from the headers alone, before the body is read: a wrong key
        (401) or a key over its request rate (429) is refused without the gateway ever
        holding its body. Refusals are counted like any other request's."""
        principal = self._authenticator.known(authorization)
        try:
            if principal is None:
                principal = await self.authenticate(authorization)
            if not principal.model_limits:
                self._denials.check(principal.name, principal.limits.rpm)
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
        chat = route.cache_name == "chat"
        scopes = principal.scopes(asked)
        keyed_cap, key_body = None, parsed.body
        if self._shared_cache and route.generates:
            # Shared between keys: keyed by the body the engine will get, the gateway's
            # cap included (keys with a token limit share with each other, and with a
            # key that asked for that many tokens itself).
            keyed_cap = self._admission.full_cap(scopes, parsed.body)
            capped_body = output_capped(parsed.body, chat, keyed_cap) if keyed_cap else None
            if capped_body is None:
                keyed_cap = None
            else:
                key_body = capped_body
        plan = self._cache.plan(
            *(route.cache_name, parsed.stream, model, key_body, principal.name),
            meta.cache_control,
            parsed.rollout,  # a variant's answers carry the rollout's name: kept apart
            parsed.payload,  # what the body was read from: its big integers keyed exactly
        )
        plan, lookup = self._cache.begin_lookup(model, plan)  # goes with the admission
        cost_body = parsed.body if route.generates else prompt_only(parsed.body, route)
        timeline = exchange.timeline
        timeline.limiting = exchange.clock()
        try:
            exchange.admit(await self._admission.admit(scopes, cost_body))
        except RateLimitError as exc:
            if memo is not None:
                self._denials.note(memo, exc, principal.limits.rpm)
            raise
        timeline.admitted = exchange.clock()
        granted = exchange.ticket.output_cap if route.generates else None
        if granted is not None and lookup is not None and asks_at_most(key_body, chat, granted):
            granted = None  # every answer keyed by it was held to that: none is too long
        plan, entry = await self._cache.finish_lookup(model, plan, lookup, granted)
        timeline.looked_up = exchange.clock()
        watch = exchange.watch
        if watch is not None:
            note_key(exchange, principal.name)
            watch.note_cache(cache_decision(plan, entry is not None))
            watch.note_route(parsed.policy, parsed.affinity_key, meta.session_id is not None)
        if entry is not None:
            exchange.finished(hit_tokens(self._cache, entry))
            if watch is not None:
                watch.record.cache = "HIT"
            return self._answers.hit(exchange, entry, client_wants_usage(parsed.body))
        cap = exchange.ticket.output_cap
        sent_cap = None  # the cap that changed the body the engine gets, if any
        if cap is not None and route.generates:  # the engine may generate what was reserved
            capped = with_output_cap(parsed, chat, cap)
            if capped is not parsed:
                sent_cap = cap
            parsed = capped
        if route.generates and (
            exchange.ticket.shortened or (self._shared_cache and sent_cap != keyed_cap)
        ):
            # Its answer may be shorter than the same request's without the cap (one the
            # budget shortened), or, in a cache shared between keys, the engine gets
            # another body than the one keyed (the limiter unreachable: no cap). It
            # neither leads a flight nor fills the cache.
            plan = _unshared(plan)
        parsed = self._tiers.apply(parsed, place)
        # Follow an identical request in flight, or route and forward this one.
        if plan.bypassed:
            exchange.cache_status = BYPASS
        if plan.key is not None:
            unkeyed_cap = sent_cap if sent_cap != keyed_cap else None  # a shared key holds it
            if plan.lookup:
                flight = self._cache.flights.join(plan.key, unkeyed_cap)
                if flight is not None:
                    exchange.follow(flight)
                    followed = await self._answers.follow(exchange, parsed, flight)
                    if followed is not None:
                        return followed
                    exchange.leave_flight()
            exchange.lead(CacheFill(self._cache, parsed.model, plan, unkeyed_cap))
            exchange.cache_status = MISS
        salt = principal.salt
        if salt is not None:  # the key's own blocks of the engines' prefix cache (unkeyed)
            parsed.body, parsed.payload = salt.onto(parsed.body, parsed.payload)
        exchange.count_in_flight()
        pair = None
        if parsed.rollout is not None and self._shadows is not None:
            copy = self._shadows.copy(
                parsed.rollout, route.path, parsed.body, meta.request_id, parsed.payload
            )
            exchange.shadow = copy  # sent once this request has ended (Exchange.close)
            pair = copy.pair if copy is not None else None
        if parsed.stream:
            return await self._answers.stream(exchange, route, parsed, meta, pair, place)
        return await self._answers.complete(exchange, route, parsed, meta, pair, place)


def prompt_only(body: dict[str, object], route: Route) -> dict[str, object]:
    """What a request that generates nothing (embeddings) asks of a token limit, in the
    form the limiter reads: its input as the prompt and one token per input (the
    limiter's least output), settled to the answer's ``usage`` afterwards. vLLM's chat
    form (``messages`` instead of ``input``) is priced by its messages and its
    ``chat_template_kwargs`` (:func:`embedding_priced`)."""
    return embedding_priced(body, route.prompt_field) | {"max_tokens": 1}


def _unshared(plan: CachePlan) -> CachePlan:
    """``plan`` without leading a flight or filling the cache (a bypass, if it had a key)."""
    if plan.key is None:
        return plan
    return replace(plan, key=None, lookup=False, store=False, bypassed=True)
