"""The answer of a request that got past admission and the cache lookup: from an
engine (JSON or a stream), or from the identical request in flight (single flight).

Split from :mod:`gateway.pipeline.service`, which decides *whether* and *how* a
request is answered (auth, parsing, permission, admission, cache, rollouts); this
module makes the answer and the headers every answer carries: the key's rate-limit
headers, ``X-Cache``, ``x-vgate-engine`` when asked, ``Server-Timing`` and, with
the admin key, the routing evidence.

A cache shared between keys (``cache.scope: shared``) tells no tenant whether
another asked the same first, nor when: its answers carry no ``X-Cache`` nor
``Age``, their ``Server-Timing`` ends at ``cache`` whether the engine answered or
not, and its replays (hits and followers) get an id of a fresh answer's form and
this request's ``created`` (:attr:`gateway.cache.entry.Entry.fresh_at`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace

from gateway.cache.entry import Entry
from gateway.cache.response_cache import ResponseCache
from gateway.cache.singleflight import Flight, FlightFailed
from gateway.config.models import renamed_for
from gateway.errors import UpstreamStatusError
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.timeline import SERVER_TIMING
from gateway.pipeline.cache_flow import follow_events, hit_tokens
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pipeline.leader_stream import LeaderStream
from gateway.pipeline.plan import ParsedRequest, Route
from gateway.pipeline.priority import Place
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import (
    Answer,
    ClientLine,
    EventStream,
    RawHeaders,
    Replay,
    Result,
)
from gateway.pipeline.usage import (
    UsageTap,
    body_prompt_tokens,
    body_usage,
    client_wants_usage,
    prompt_tokens,
    usage_of,
    usage_tokens,
    with_usage_requested,
)
from gateway.pipeline.watching import attempt_context, with_trailer
from gateway.pool.engine_pool import EnginePool
from gateway.rollouts.agreement import AgreementPair, StreamCollector, answer_text
from gateway.rollouts.timing import EventTiming
from gateway.upstream.relay import BatchTap, StreamOutcome, relay_events

ENGINE_HEADER = b"x-vgate-engine"
X_CACHE = b"x-cache"


class EngineAnswers:
    """Makes the answers of :class:`gateway.pipeline.service.CompletionService`."""

    def __init__(
        self,
        forwarder: Forwarder,
        pool: EnginePool,
        cache: ResponseCache,
        metrics: GatewayMetrics,
        debug_headers: bool,
        engine_names: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        self._engine_names = engine_names or {}
        self._forwarder = forwarder
        self._pool = pool
        self._cache = cache
        self._metrics = metrics
        self._debug_headers = debug_headers  # x-vgate-engine: the engine's id, never its URL

    async def follow(
        self, exchange: Exchange, parsed: ParsedRequest, flight: Flight
    ) -> Result | None:
        """Answer from the identical request in flight; None if it failed before any answer."""
        model = parsed.model
        fresh_at = None if self._cache.discloses else int(time.time())  # when it asked
        headers = timed(exchange, [*exchange.ticket.raw_headers, *self.hit_headers(None)])
        if not parsed.stream:
            try:
                entry = await flight.result()
            except FlightFailed:
                return None
            self._metrics.cache_joins.labels(model).inc()
            exchange.finished(hit_tokens(self._cache, entry))
            if fresh_at is not None:  # the flight's entry is every follower's: a copy
                entry = replace(entry, fresh_at=fresh_at)
            return Answer(entry.replay(), headers)
        await flight.wait(0)
        if flight.failed and not flight.end:
            return None
        self._metrics.cache_joins.labels(model).inc()
        outcome = exchange.outcome = StreamOutcome()

        def done(entry: Entry) -> None:
            exchange.finished(hit_tokens(self._cache, entry))

        wants_usage = client_wants_usage(parsed.body)
        events = follow_events(flight, wants_usage, outcome, done, fresh_at, exchange)
        line = ClientLine()  # hung up on if the flight cuts it (Flight.hang_ups)
        flight.hang_ups[exchange] = line.drop
        return EventStream(events, headers, exchange.close, line=line)

    async def complete(
        self,
        exchange: Exchange,
        route: Route,
        parsed: ParsedRequest,
        meta: RequestMeta,
        pair: AgreementPair | None,
        place: Place,
    ) -> Answer:
        attempt = self._attempt(exchange, route, parsed, parsed.payload, meta, place)
        try:
            url, reply = await self._forwarder.complete(exchange, attempt)
        except UpstreamStatusError as exc:
            exc.renamed = self._hidden_names(parsed)
            raise
        wants_usage, rollout = exchange.ticket.wants_usage, exchange.variant is not None
        body = reply.body if parsed.rename is None else parsed.rename.inspect(reply.body)
        answer = reply.answer  # the forwarder's parse of a JSON answer (else None)
        fill = exchange.fill
        if fill is not None:  # what the client gets is what a hit replays (and its usage)
            tokens = fill.finish_json(body, reply.status, answer)
        elif wants_usage or rollout:
            tokens = usage_tokens(answer.get("usage")) if type(answer) is dict else None
            if answer is None:  # not parsed (not labelled JSON, or too large to)
                tokens = body_usage(body)
        else:
            tokens = None
        prompt_used = None
        if exchange.ticket.learns:  # a text-estimated prompt: teaches the calibration
            usage = answer.get("usage") if type(answer) is dict else None
            prompt_used = body_prompt_tokens(body) if usage is None else prompt_tokens(usage)
        exchange.finished(tokens if wants_usage else None, prompt_used)
        if exchange.watch is not None:
            exchange.watch.usage(answer.get("usage") if type(answer) is dict else usage_of(body))
        if rollout:
            exchange.tokens = tokens
            if pair is not None:
                pair.primary(answer_text(body))
        return Answer(body, self._headers(exchange, url), reply.status)

    def _hidden_names(self, parsed: ParsedRequest) -> tuple[str, ...] | None:
        """``(*engine_names, asked)`` for an engine's error message
        (:attr:`UpstreamStatusError.renamed`): the names the engines know the model by
        (a rollout's: its variant's), each written as the name the client asked for."""
        rename = parsed.rename
        if rename is None:
            return renamed_for(self._engine_names, parsed.model, parsed.model, parsed.model)
        return renamed_for(self._engine_names, parsed.model, rename.served, rename.alias)

    async def stream(
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
                payload = with_usage_requested(parsed.body, payload)
        attempt = self._attempt(exchange, route, parsed, payload, meta, place)
        try:
            url, stream = await self._forwarder.open_stream(exchange, attempt)
        except UpstreamStatusError as exc:
            exc.renamed = self._hidden_names(parsed)
            raise
        # Renamed first, then shared and stored with its usage event, then stripped.
        taps: list[BatchTap] = [t for t in (parsed.rename, fill, usage) if t is not None]
        collector = StreamCollector(pair) if pair is not None else None
        if rollout:  # timed as it arrives; the primary's text kept for the shadow's
            exchange.timing = EventTiming(exchange.clock)
            taps.insert(0, exchange.timing)
            if collector is not None:
                taps.append(collector)
        outcome = exchange.outcome = StreamOutcome()

        def done() -> None:
            tokens = usage.tokens if usage is not None else None
            prompt_used = None
            if usage is not None and exchange.ticket.learns:  # calibrates the estimate
                prompt_used = prompt_tokens(usage.usage)
            wanted = exchange.ticket.wants_usage or fill is not None
            exchange.finished(tokens if wanted else None, prompt_used)
            if fill is not None:
                fill.finish_stream(tokens)
            if watch is not None and usage is not None:
                watch.usage(usage.usage)
            if rollout:
                exchange.tokens = tokens
                if pair is not None and collector is not None:
                    pair.primary(collector.text())

        secrets = self._pool.credentials.secrets  # (never in an engine's error event)
        relay = relay_events(
            stream, outcome, exchange.clock, taps, done, route.prompt_param, secrets
        )
        events: AsyncIterator[bytes] = relay
        close = exchange.close
        line = None
        if fill is not None:  # its followers read the engine at its pace, not its client's
            line = ClientLine()
            leader = LeaderStream(relay, fill, close, self._cut_counter(exchange, line))
            events, close = leader, leader.close
        if watch is not None and watch.evidence is not None:
            events = with_trailer(events, lambda: watch.trailer(exchange))
        return EventStream(events, self._headers(exchange, url), close, line=line)

    def _cut_counter(self, exchange: Exchange, line: ClientLine) -> Callable[[], None]:
        """What a leader's cut does (``vgate_slow_clients_cut_total``, then the hang-up);
        its flight's follower cuts are counted too."""
        cuts = self._metrics.slow_clients_cut
        model = exchange.model
        fill = exchange.fill
        if fill is not None:
            fill.flight.on_cut = lambda: cuts.labels(model, "follower").inc()

        def leader_cut() -> None:
            cuts.labels(model, "leader").inc()
            line.drop()

        return leader_cut

    def _headers(self, exchange: Exchange, url: str) -> RawHeaders:
        headers = [*exchange.ticket.raw_headers]
        if self._debug_headers:
            headers.append((ENGINE_HEADER, self._pool.engine_id(url).encode()))
        status, upstream = exchange.cache_status, True
        if status is not None:
            if self._cache.discloses:
                headers.append((X_CACHE, status))
            else:  # a shared cache's: timed as a hit is, so that no hit stands out
                upstream = False
        return timed(exchange, headers, upstream)

    def hit(self, exchange: Exchange, entry: Entry, wants_usage: bool) -> Replay:
        """A cache hit's answer: its headers, and, when the cache is shared between keys,
        the entry marked to replay as a fresh answer would look (:attr:`Entry.fresh_at`)."""
        if not self._cache.discloses:
            entry.fresh_at = int(time.time())
        headers = [*exchange.ticket.raw_headers, *self.hit_headers(entry)]
        return Replay(entry, wants_usage, timed(exchange, headers))

    def hit_headers(self, entry: Entry | None) -> RawHeaders:
        """``X-Cache: HIT`` and ``Age`` (0 for an answer shared while it is made), unless
        the cache is shared between keys: then they would tell one tenant of another's
        traffic, and answers carry neither."""
        if not self._cache.discloses:
            return []
        age = 0 if entry is None else max(0, int(time.time() - entry.created_at))
        return [(X_CACHE, b"HIT"), (b"age", str(age).encode())]

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
            json_object=True,
        )


def timed(exchange: Exchange, headers: RawHeaders, upstream: bool = True) -> RawHeaders:
    """``headers`` plus ``Server-Timing`` (without ``queue`` and ``upstream`` unless
    ``upstream``) and, when asked, the routing evidence."""
    headers.append((SERVER_TIMING, exchange.timeline.server_timing(upstream)))
    watch = exchange.watch
    if watch is not None and exchange.outcome is None:  # a stream's comes last
        explained = watch.explain_header(exchange)
        if explained is not None:
            headers.append(explained)
    return headers
