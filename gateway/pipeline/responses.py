"""The Responses API: create (streamed or not), retrieve, delete, cancel, input items.

Create runs the completion pipeline's stages: auth (before the body, at the route),
checks, admission (``max_output_tokens`` is the output reserved, settled to the
answer's ``usage``), routing by the model's policy, forwarding with failover, one
:class:`~gateway.pipeline.exchange.Exchange` owning the request's resources on
every exit path. What differs is state: the gateway stores each response
(:mod:`gateway.responses.store`, in Redis when configured) and expands a
``previous_response_id`` into the whole conversation itself
(:mod:`gateway.responses.conversation`), so follow-ups and retrieval work through
any gateway replica and on any engine, whatever engines restart.

A request to a rollout is served by the variant chosen for it, as for completions
(:mod:`gateway.pipeline.service`): permission and limits by the rollout's name, the
engine and the stored response by the variant, ``model`` and ``x-vgate-variant`` in
the answer. Responses are not copied to a rollout's shadow.

Priority: a create waits at its key's tier, or the later one its body's ``priority``
asks for; a client's own ``priority`` field reaches the engine clamped to that (never
earlier than the key's tier; a non-integer is a 400), and none is added
(:func:`gateway.pipeline.priority.body_priority`).

``background: true`` is refused (400): the gateway runs no response without a
client attached. Cancel therefore answers as OpenAI does for a response that was
not created in the background: 400 ``Cannot cancel a synchronous response.``
(404 when the id is unknown to the key).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from gateway.auth.authenticator import Authenticator, Principal
from gateway.config.models import ModelSettings, engine_names_of, renamed_for
from gateway.config.responses import ResponsesSettings
from gateway.config.sections import MAX_PROMPT_CHARS
from gateway.errors import (
    GatewayError,
    ModelNotFoundError,
    UpstreamError,
    UpstreamStatusError,
)
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.timeline import SERVER_TIMING
from gateway.pipeline.callers import authenticate, check_model_allowed
from gateway.pipeline.exchange import VARIANT_HEADER, Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pipeline.parsing import decode_json_object
from gateway.pipeline.plan import ModelRename, RequestPlanner
from gateway.pipeline.priority import body_priority, clamped_body
from gateway.pipeline.response_events import (
    FieldRestore,
    FinalResponseTap,
    SequenceMark,
    relay_response_events,
)
from gateway.pipeline.response_failures import told_response
from gateway.pipeline.response_records import Keeper, ResponseRecords
from gateway.pipeline.response_turns import Keyed, Turn, parsed_answer, usage_tokens
from gateway.pipeline.results import Answer, EventStream, Result
from gateway.pipeline.stored_responses import NotCancellableError as NotCancellableError
from gateway.pipeline.stored_responses import StoredResponses
from gateway.pipeline.usage import response_input_tokens as input_tokens
from gateway.pool.engine_pool import EnginePool
from gateway.protocol.exact_json import ExactSource, encoded_exactly
from gateway.ratelimit.admission import Admission
from gateway.responses.conversation import (
    MAX_ITEMS,
    CreateRequest,
    PreviousResponseNotFoundError,
    check_found,
    conversation,
    engine_payload,
    new_response_id,
    read_create,
)
from gateway.responses.encoding import (
    encoded_ids,
    encoded_items,
    exactly_read,
)
from gateway.responses.pricing import check_text_size, cost_body
from gateway.responses.store import ResponseStore, StoredResponse
from gateway.rollouts.choice import VariantChooser
from gateway.rollouts.contracts import NoObserver, VariantObserver
from gateway.rollouts.timing import EventTiming
from gateway.routing.policies import RoutingTable
from gateway.upstream.relay import BatchTap, StreamOutcome

log = logging.getLogger("vgate.responses")

PATH = "/v1/responses"
LABEL = "responses"
_VARIANT = VARIANT_HEADER.encode()


class ResponsesService:
    """The Responses API over the pool, the limits and the response store."""

    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        pool: EnginePool,
        routing: RoutingTable,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
        authenticator: Authenticator,
        admission: Admission,
        store: ResponseStore,
        settings: ResponsesSettings,
        rollouts: VariantChooser | None = None,
        observer: VariantObserver | None = None,
        max_items: int = MAX_ITEMS,
        max_chars: int = MAX_PROMPT_CHARS,
    ) -> None:
        self._max_items = max_items  # server.max_messages
        self._max_chars = max_chars  # server.max_prompt_chars
        self._served = {name: m.served_name for name, m in models.items()}
        self._engine_names = engine_names_of(models)
        self._rollouts = rollouts
        self._observer = observer or NoObserver()
        self._pool = pool
        self._routing = routing
        self._forwarder = forwarder
        self._metrics = metrics
        self._authenticator = authenticator
        self._admission = admission
        self._records = ResponseRecords(store, settings, metrics)
        self._stored = StoredResponses(admission, self._records)

    async def caller(self, authorization: str | None) -> Principal:
        """Who is calling, from the headers alone (401 before any body is read)."""
        return await authenticate(self._authenticator, self._metrics, authorization)

    # -- create ----------------------------------------------------------------------

    async def create(
        self, raw: bytes, principal: Principal, request_id: str, session_id: str | None
    ) -> Result:
        """Answer one create request; an :class:`EventStream` owns its resources from
        then on (its ``close`` releases them)."""
        exchange = Exchange(LABEL, self._pool, self._metrics)
        try:
            if RequestPlanner.offloads(raw):  # a large body is not decoded on the loop
                request = await asyncio.to_thread(self._read, raw)
            else:
                request = self._read(raw)
            result = await self._create(exchange, request, raw, principal, request_id, session_id)
            result.headers.append((SERVER_TIMING, exchange.timeline.server_timing()))
            if exchange.variant is not None:
                result.headers.append((_VARIANT, exchange.variant.encode()))
        except GatewayError as exc:
            exchange.failed(exc)
            exchange.close()
            raise
        except BaseException:  # the client left (cancelled) or a bug: release, keep the charge
            exchange.close()
            raise
        if not isinstance(result, EventStream):
            exchange.close()
        return result

    def _read(self, raw: bytes) -> CreateRequest:
        """The create body, decoded and checked (its integers beyond 64 bits read
        exactly only when written: :mod:`gateway.responses.encoding`)."""
        return read_create(decode_json_object(raw), self._max_items)

    async def _create(
        self,
        exchange: Exchange,
        request: CreateRequest,
        raw: bytes,
        principal: Principal,
        request_id: str,
        session_id: str | None,
    ) -> Result:
        asked = model = request.model  # the key is allowed and charged for what it asked
        rollouts = self._rollouts
        if rollouts is not None and asked in rollouts:
            check_model_allowed(principal, asked, self._metrics)
            model = rollouts.choose(
                asked,
                user=request.body.get("user"),
                session=session_id,
                key_name=principal.name,
                pinned=principal.variants,
            )
            if not self._pool.has_model(model):
                raise ModelNotFoundError(asked)
            exchange.variant, exchange.observer = model, self._observer
        else:
            if not self._pool.has_model(model):
                raise ModelNotFoundError(model)
            check_model_allowed(principal, model, self._metrics)
        # Labelled by the model only once it is known to be served and the key's: a
        # client's every made-up name would be a metric series of its own for ever.
        exchange.model = asked
        priority = body_priority(principal.priority, request.body)
        changed = clamped_body(request.body, priority)
        if changed is not None:  # the engine never sees an earlier priority than the key's
            request = replace(request, body=changed)
        policy, prefix_chars = self._routing.for_model(model)
        keyed = Keyed(session_id, prefix_chars) if policy.wants_affinity_key else None
        # Read exactly once at most, by the items' write and the engine body's around them
        source = ExactSource(raw)
        if request.previous_response_id is None:
            turn = await self._admit(exchange, request, source, principal, asked, keyed, None)
        else:  # the previous record is read before admission: a few of a key's at once
            async with self._records.loading.held(principal.name):
                try:
                    turn = await self._continue(exchange, request, source, principal, asked, keyed)
                except GatewayError as exc:  # refused: its frames would keep the record
                    raise exc.with_traceback(None) from None  # alive until answered
        served = self._served.get(model, model)
        response_id = new_response_id()  # stored under it only (not the engine's say)
        cap = exchange.ticket.output_cap
        items = orjson.Fragment(turn.items)
        salt = principal.salt  # the key's own blocks of the engines' prefix cache
        salted = None if salt is None else salt.value_for(request.body)
        payload = engine_payload(request, items, response_id, served, cap, source, salted)
        del source  # its exact reading (the body decoded) is not kept while the engine answers
        attempt = Attempt(
            model, PATH, payload, request_id, policy, turn.key,
            key=principal.name, priority=priority, json_object=True, parsed_whole=True,
        )  # fmt: skip
        taps: list[BatchTap] = []
        if served != asked:
            taps.append(ModelRename(served, asked))
        if request.previous_response_id is not None:
            taps.append(FieldRestore(request.previous_response_id))
        keep = None
        if request.store:
            keep = Keeper(self._records, principal.name, turn, response_id)
        exchange.count_in_flight()
        try:
            if request.stream:
                return await self._stream(exchange, attempt, taps, keep)
            return await self._complete(exchange, attempt, taps, keep)
        except UpstreamStatusError as exc:
            exc.prompt_param = "input"  # where a Responses request's prompt is
            exc.renamed = renamed_for(self._engine_names, model, served, asked)
            raise

    async def _continue(
        self,
        exchange: Exchange,
        request: CreateRequest,
        source: ExactSource,
        principal: Principal,
        asked: str,
        keyed: Keyed | None,
    ) -> Turn:
        """:meth:`_admit` of a follow-up, its previous record loaded (and counted
        against the worker's budget of decoded records) until it is admitted."""
        previous_id = request.previous_response_id or ""
        missing = PreviousResponseNotFoundError(previous_id)
        async with self._records.loaded(previous_id, principal.name, missing) as loaded:
            previous = check_found(loaded, principal.name, missing)
            return await self._admit(exchange, request, source, principal, asked, keyed, previous)

    async def _admit(
        self,
        exchange: Exchange,
        request: CreateRequest,
        source: ExactSource,
        principal: Principal,
        asked: str,
        keyed: Keyed | None,
        previous: StoredResponse | None,
    ) -> Turn:
        """The conversation the engine gets (``previous``'s, continued), admitted:
        priced by it, charged to the key for ``asked``; encoded, with its items' ids,
        and its affinity key when ``keyed`` (nothing decoded outlives this call)."""
        items, item_ids = conversation(previous, request, self._max_items)
        timeline = exchange.timeline
        timeline.limiting = exchange.clock()
        priced = cost_body(request, items)
        check_text_size(priced, self._max_chars)
        exchange.admit(await self._admission.admit(principal.scopes(asked), priced))
        # The store's quota after the rate limits: a key over them is refused without a
        # store call, and a quota refusal settles the admission to 0 (:class:`Exchange`).
        if request.store:
            await self._records.check_quota(principal.name)
        timeline.admitted = timeline.looked_up = exchange.clock()  # no cache here: 0 ms
        key = None if keyed is None else keyed.key(request, items)
        encoded, cuts = await encoded_items(items, request.input, source, previous)
        return Turn(encoded, cuts, encoded_ids(item_ids), key)

    async def _complete(
        self,
        exchange: Exchange,
        attempt: Attempt,
        taps: list[BatchTap],
        keep: Keeper | None,
    ) -> Answer:
        _, reply = await self._forwarder.complete(exchange, attempt)
        body = reply.body
        for tap in taps:
            body = tap.inspect(body)
        # Checked a JSON object and parsed by the forwarder (parsed_whole), whatever its size
        response = reply.answer if body is reply.body else parsed_answer(body)
        if not isinstance(response, dict):
            raise UpstreamError("engine answered badly: an answer that is not a JSON object")
        if response.get("status") == "failed" and told_response(
            response, self._pool.credentials.secrets
        ):
            body = encoded_exactly(response, body)  # the engine's internals kept from it
        tokens = usage_tokens(response) if exchange.ticket.wants_usage else None
        exchange.finished(tokens, input_tokens(response))
        if exchange.variant is not None:
            exchange.tokens = usage_tokens(response)
        if keep is not None:  # stored: its integers beyond 64 bits kept as they came
            await keep(response, lambda: exactly_read(body, response))
        return Answer(body, [*exchange.ticket.raw_headers], reply.status)

    async def _stream(
        self,
        exchange: Exchange,
        attempt: Attempt,
        taps: list[BatchTap],
        keep: Keeper | None,
    ) -> EventStream:
        _, stream = await self._forwarder.open_stream(exchange, attempt)
        outcome = exchange.outcome = StreamOutcome()
        wants_usage = exchange.ticket.wants_usage
        if exchange.variant is not None:
            exchange.timing = EventTiming(exchange.clock)
            taps = [exchange.timing, *taps]

        async def finished(response: dict[str, Any]) -> None:
            exchange.finished(
                usage_tokens(response) if wants_usage else None, input_tokens(response)
            )
            if exchange.variant is not None:
                exchange.tokens = usage_tokens(response)
            if keep is not None:
                await keep(response, final.exact_response)

        final, mark = FinalResponseTap(exact=keep is not None), SequenceMark()
        secrets = self._pool.credentials.secrets
        events = relay_response_events(
            stream, outcome, exchange.clock, taps, final, finished, mark, secrets
        )
        return EventStream(events, [*exchange.ticket.raw_headers], exchange.close, mark.error_event)

    # -- stored responses (:class:`StoredResponses`) ------------------------------

    async def retrieve(self, response_id: str, principal: Principal) -> Answer:
        return await self._stored.retrieve(response_id, principal)

    async def delete(self, response_id: str, principal: Principal) -> Answer:
        return await self._stored.delete(response_id, principal)

    async def cancel(self, response_id: str, principal: Principal) -> Answer:
        return await self._stored.cancel(response_id, principal)

    async def input_items(
        self, response_id: str, principal: Principal, query: Mapping[str, str]
    ) -> Answer:
        return await self._stored.input_items(response_id, principal, query)
