"""The request pipeline for completions:
auth → parse → admission (rate limits) → route → forward/stream → settle.

Built once at start-up (:class:`CompletionService`) and called by the thin
routers in :mod:`gateway.api`. Caching slots in here as a further stage; the
routers do not change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.responses import Response

from gateway.auth.authenticator import Authenticator, Principal
from gateway.cache.entry import json_body
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight, FlightFailed
from gateway.errors import AuthenticationError, GatewayError, PermissionDeniedError
from gateway.observability.metrics import UNRESOLVED_MODEL, GatewayMetrics
from gateway.pipeline.cache_flow import CacheFill, follow_events, hit_response, hit_tokens
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pipeline.plan import CHAT, ParsedRequest, RequestPlanner, Route
from gateway.pipeline.usage import UsageTap, body_usage, client_wants_usage, with_usage_requested
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission, Ticket
from gateway.upstream.client import UpstreamStream
from gateway.upstream.relay import (
    SSE_HEADERS,
    BatchTap,
    SSEResponse,
    StreamOutcome,
    relay_events,
)

ENGINE_HEADER = "x-vgate-engine"


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What the service needs from the HTTP request besides its body."""

    request_id: str
    authorization: str | None = None
    session_id: str | None = None
    cache_control: str | None = None


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
    ) -> None:
        self._authenticator = authenticator
        self._admission = admission
        self._cache = cache
        self._planner = planner
        self._pool = pool
        self._forwarder = forwarder
        self._metrics = metrics

    async def handle(self, route: Route, raw: bytes, meta: RequestMeta) -> Response:
        """Answer one request; every failure is raised as a :class:`GatewayError`."""
        started = time.perf_counter()
        model = UNRESOLVED_MODEL
        try:
            principal = self._authenticator.known(meta.authorization)
            if principal is None:  # unknown here, or refused: the full check says which
                principal = await self.authenticate(meta.authorization)
            parsed = self._planner.parse(route, raw, meta.session_id)
            model = parsed.model
            if not principal.may_use(model):
                self._metrics.auth_failures.labels("model_not_allowed").inc()
                raise PermissionDeniedError(
                    f"The key '{principal.name}' may not use the model `{model}`.", param="model"
                )
            plan = self._cache.plan(model, parsed.body, principal.name, meta.cache_control)
            plan, lookup = self._cache.begin_lookup(model, plan)  # goes with the admission
            ticket = await self._admission.admit(principal.scopes(model), parsed.body)
            plan, entry = await self._cache.finish_lookup(model, plan, lookup)
            if entry is not None:
                ticket.settle(hit_tokens(self._cache, entry))
                wants_usage = client_wants_usage(parsed.body)
                response = hit_response(entry, model, parsed.stream, wants_usage, ticket.headers)
            else:
                response = await self._forward(route, parsed, ticket, plan, meta, started)
        except GatewayError as exc:
            self._metrics.observe_request(
                model, route.label, exc.status, time.perf_counter() - started
            )
            raise
        if not isinstance(response, SSEResponse):  # streams are observed when they end
            self._metrics.observe_request(
                model, route.label, response.status_code, time.perf_counter() - started
            )
        return response

    @property
    def authenticator(self) -> Authenticator:
        return self._authenticator

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller, or AuthenticationError (401), counted in metrics."""
        try:
            return await self._authenticator.authenticate(authorization)
        except AuthenticationError:
            reason = "missing_key" if not authorization else "invalid_key"
            self._metrics.auth_failures.labels(reason).inc()
            raise

    async def _forward(
        self,
        route: Route,
        parsed: ParsedRequest,
        ticket: Ticket,
        plan: CachePlan,
        meta: RequestMeta,
        started: float,
    ) -> Response:
        """Route and forward (or follow an identical request in flight); settle the ticket
        on every path and put its headers on the answer."""
        fill: CacheFill | None = None
        headers = {"X-Cache": "BYPASS"} if plan.bypassed else {}  # the ticket adds its own
        if plan.key is not None:
            if plan.lookup:
                flight = self._cache.flights.join(plan.key)
                if flight is not None:
                    followed = await self._follow(route, parsed, ticket, flight, started)
                    if followed is not None:
                        return followed
            fill = CacheFill(self._cache, parsed.model, plan, route is CHAT)
            headers = headers | {"X-Cache": "MISS"}
        try:
            if parsed.stream:
                response = await self._stream(route, parsed, ticket, headers, fill, meta, started)
            else:
                in_flight = self._metrics.in_flight.labels(parsed.model)
                in_flight.inc()
                try:
                    response = await self._complete(route, parsed, ticket, headers, fill, meta)
                finally:
                    in_flight.dec()
        except GatewayError as exc:
            ticket.settle(0)  # nothing was generated: no tokens charged
            exc.headers.update(ticket.headers)
            exc.headers.update(headers)
            if fill is not None:
                fill.fail()
            raise
        except BaseException:
            ticket.settle(None)  # the client left: outcome unknown, keep the reservation
            if fill is not None:
                fill.fail()
            raise
        return response

    async def _follow(
        self, route: Route, parsed: ParsedRequest, ticket: Ticket, flight: Flight, started: float
    ) -> Response | None:
        """Answer from the identical request in flight; None if it failed before any answer."""
        model = parsed.model
        headers = ticket.headers | {"X-Cache": "HIT", "Age": "0"}
        if not parsed.stream:
            try:
                entry = await flight.result()
            except FlightFailed:
                return None
            self._metrics.cache_joins.labels(model).inc()
            ticket.settle(hit_tokens(self._cache, entry))
            return Response(json_body(entry, model), headers=headers, media_type="application/json")
        await flight.wait(0)
        if flight.failed and not flight.pieces:
            return None
        self._metrics.cache_joins.labels(model).inc()
        outcome = StreamOutcome()

        async def finish() -> None:
            entry = flight.entry
            ticket.settle(hit_tokens(self._cache, entry) if entry is not None else 0)
            outcome.completed = entry is not None
            self._record_stream(route, model, outcome, started)

        events = follow_events(flight, route is CHAT, model, client_wants_usage(parsed.body))
        return SSEResponse(events, on_close=finish, headers=SSE_HEADERS | headers)

    async def _complete(
        self,
        route: Route,
        parsed: ParsedRequest,
        ticket: Ticket,
        answer_headers: dict[str, str],
        fill: CacheFill | None,
        meta: RequestMeta,
    ) -> Response:
        url, reply = await self._forwarder.complete(
            self._attempt(route, parsed, parsed.payload, meta)
        )
        ticket.settle(body_usage(reply.body) if ticket.wants_usage else None)
        if fill is not None:
            fill.finish_json(reply.body)
        response = Response(
            reply.body if parsed.rename is None else parsed.rename.inspect(reply.body),
            reply.status,
            {ENGINE_HEADER: url, **answer_headers},
            media_type="application/json",
        )
        response.raw_headers += ticket.raw_headers
        return response

    async def _stream(
        self,
        route: Route,
        parsed: ParsedRequest,
        ticket: Ticket,
        answer_headers: dict[str, str],
        fill: CacheFill | None,
        meta: RequestMeta,
        started: float,
    ) -> Response:
        usage: UsageTap | None = None
        payload = parsed.payload
        if ticket.wants_usage or fill is not None:
            # The engine must report usage; the client sees only what it asked for.
            usage = UsageTap(strip=not client_wants_usage(parsed.body))
            if usage.strip:
                payload = with_usage_requested(parsed.body)
        url, stream = await self._forwarder.open_stream(self._attempt(route, parsed, payload, meta))
        taps: list[BatchTap] = [t for t in (fill, usage, parsed.rename) if t is not None]
        response = self._relay(
            route, parsed.model, url, stream, started, ticket, usage, fill, taps, answer_headers
        )
        response.raw_headers += ticket.raw_headers
        return response

    @staticmethod
    def _attempt(route: Route, parsed: ParsedRequest, payload: bytes, meta: RequestMeta) -> Attempt:
        return Attempt(
            parsed.model, route.path, payload, meta.request_id, parsed.policy, parsed.affinity_key
        )

    def _relay(
        self,
        route: Route,
        model: str,
        url: str,
        stream: UpstreamStream,
        started: float,
        ticket: Ticket,
        usage: UsageTap | None,
        fill: CacheFill | None,
        taps: list[BatchTap],
        answer_headers: dict[str, str],
    ) -> Response:
        outcome = StreamOutcome()
        in_flight = self._metrics.in_flight.labels(model)
        in_flight.inc()
        closed = False

        async def done() -> None:
            ticket.settle(usage.tokens if usage is not None else None)
            if fill is not None:
                fill.finish_stream()

        async def finish() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            stream.close()
            self._pool.release(url)
            in_flight.dec()
            ticket.settle(None)  # no-op after `done`; else the stream did not finish
            if fill is not None:
                fill.fail()  # no-op after `done`
            self._record_stream(route, model, outcome, started)

        body = relay_events(stream, outcome, time.perf_counter, taps, done)
        headers = SSE_HEADERS | {ENGINE_HEADER: url} | answer_headers
        return SSEResponse(body, on_close=finish, headers=headers)

    def _record_stream(
        self, route: Route, model: str, outcome: StreamOutcome, started: float
    ) -> None:
        if outcome.first_chunk_at is not None:
            self._metrics.time_to_first_token.labels(model, route.label).observe(
                outcome.first_chunk_at - started
            )
        if outcome.error is not None:
            self._metrics.upstream_errors.labels(model, "stream_interrupted").inc()
        elif not outcome.completed:
            self._metrics.client_disconnects.labels(model).inc()
        self._metrics.observe_request(model, route.label, 200, time.perf_counter() - started)
