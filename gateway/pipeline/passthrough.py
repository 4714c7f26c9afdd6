"""vLLM's model-scoped routes (``/tokenize``, ``/v1/score``, ``/pooling``, audio, ...),
allowlisted and forwarded by the request's ``model``.

Each route goes through the same stages as a completion, minus what does not
apply: auth (before the body is read), the model's existence (404) and the key's
right to it (404 too, as for a model that does not exist), admission against the
key's request rate and concurrency limits, the model's routing policy, and
:class:`Forwarder` (engine credentials, failover while nothing was answered,
timeouts, breaker signals). Not cached,
never streamed through the relay (a streamed transcription arrives whole).

Priority: a request waits at its key's tier, or the later one its body's
``priority`` asks for; a client's ``priority`` field is clamped to that (never an
earlier one than the key's reaches the engine; a non-integer is a 400), and none is
added (:func:`gateway.pipeline.priority.body_priority`). A body without the field,
for a model the engines know by the same name, is forwarded byte for byte, but for
the key's ``cache_salt`` on the routes that run the model (:mod:`gateway.auth.prefix_salt`;
not ``/tokenize``, ``/detokenize`` or the audio forms).

Token limits (a key with a ``tpm``), by what the route makes the model do
(:attr:`ScopedRoute.tokens`): tokenizing uses no model, so ``/tokenize`` and
``/detokenize`` reserve and charge nothing. Pooling, classifying, scoring and
reranking run their input through the model as ``/v1/embeddings`` does, and are
priced like it: the body's length at :data:`CHARS_PER_TOKEN` characters a token (every
field the engine reads is in it: ``input``, ``text_1``/``text_2``, ``query`` and
``documents``, ...) plus one token, plus a token per token id in ``input`` and a
scoring query once per document it runs with, settled to the answer's ``usage``. Speech to text
generates a transcript whose length the audio decides, not the request (vLLM cuts long
audio into 30-second pieces, each with its own output budget): it reserves
``ratelimit.default_max_tokens`` (so a key out of tokens is refused) and is settled to
its transcript, a token per :data:`CHARS_PER_TOKEN` characters of the answer's
``text`` (a stream: its deltas; the whole answer for ``text``, ``srt``, ``vtt``). A long
recording can so take a key past its budget by one answer; the overshoot is charged,
and the key's next requests wait for it to leave the window. Without these, a key
out of tokens embedded through ``/pooling`` or transcribed for free (bug hunt).

The engine's answer passes through as it came (its status, body and content
type), with the client's model name put back where the engine names its own;
an engine error is raised as :class:`UpstreamStatusError`, which answers in
OpenAI's format.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.authenticator import Authenticator, Principal
from gateway.config.models import ModelSettings, engine_names_of, renamed_for
from gateway.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    UpstreamStatusError,
)
from gateway.observability.metrics import UNRESOLVED_MODEL, GatewayMetrics
from gateway.pipeline.callers import authenticate, check_model_allowed
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.form_field import boundary_of, find_field, replace_field
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pipeline.parsing import decode_json_object
from gateway.pipeline.plan import OFFLOAD_BYTES, ModelRename
from gateway.pipeline.priority import body_priority, clamped_body
from gateway.pipeline.usage import body_usage
from gateway.pool.engine_pool import EnginePool
from gateway.protocol.exact_json import encoded_exactly
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.cost import CHARS_PER_TOKEN, Cost
from gateway.routing.policies import RoutingTable

RawHeaders = list[tuple[bytes, bytes]]
MAX_MODEL_NAME = 1024
"""Longer ``model`` values are refused before any lookup (and never echoed)."""


class TokenUse(enum.Enum):
    """What a route's request asks of a key's ``tpm``."""

    NONE = "none"
    """No model runs (tokenizing): nothing reserved or charged."""
    INPUT = "input"
    """Its input runs through the model: priced as an embedding, settled to ``usage``."""
    TRANSCRIPT = "transcript"
    """It generates a transcript: ``default_max_tokens`` reserved, settled to its text."""


@dataclass(frozen=True, slots=True)
class Pairing:
    """Where a scoring route's query and documents are: vLLM runs the query through the
    model with each document (a query given once, or as a list of one, is repeated for
    every document), and its ``usage`` counts it once per pair."""

    queries: tuple[str, ...]
    documents: tuple[str, ...]


SCORE_PAIRS = Pairing(("text_1", "queries"), ("text_2", "documents", "items"))
RERANK_PAIRS = Pairing(("query",), ("documents",))


@dataclass(frozen=True, slots=True)
class ScopedRoute:
    """One vLLM route the gateway forwards: its path (the same on the engine), its
    metrics label, and whether its body is a multipart form (audio) or JSON."""

    path: str
    label: str
    tokens: TokenUse
    """What it asks of a token limit (the module's docstring)."""
    form: bool = False
    prompt_param: str | None = None
    """Where its prompt is, for a context-length error's ``param`` (None: in several
    fields, or none)."""
    pairing: Pairing | None = None
    """A scoring route's query and documents (:func:`input_cost`)."""


SCOPED_ROUTES: tuple[ScopedRoute, ...] = (
    ScopedRoute("/tokenize", "tokenize", TokenUse.NONE),
    ScopedRoute("/detokenize", "detokenize", TokenUse.NONE),
    ScopedRoute("/v1/score", "score", TokenUse.INPUT, pairing=SCORE_PAIRS),
    ScopedRoute("/score", "score", TokenUse.INPUT, pairing=SCORE_PAIRS),
    ScopedRoute("/v1/rerank", "rerank", TokenUse.INPUT, pairing=RERANK_PAIRS),
    ScopedRoute("/rerank", "rerank", TokenUse.INPUT, pairing=RERANK_PAIRS),
    ScopedRoute("/v2/rerank", "rerank", TokenUse.INPUT, pairing=RERANK_PAIRS),
    ScopedRoute("/pooling", "pooling", TokenUse.INPUT, prompt_param="input"),
    ScopedRoute("/classify", "classify", TokenUse.INPUT, prompt_param="input"),
    ScopedRoute("/v1/audio/transcriptions", "audio_transcriptions", TokenUse.TRANSCRIPT, form=True),
    ScopedRoute("/v1/audio/translations", "audio_translations", TokenUse.TRANSCRIPT, form=True),
)
"""Every vLLM route the gateway forwards besides the OpenAI ones; no other is reachable."""


@dataclass(frozen=True, slots=True)
class ScopedMeta:
    """What the service needs from the HTTP request besides its body."""

    request_id: str
    content_type: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class PassthroughAnswer:
    """The engine's answer, as it came (model name aside), with the rate-limit headers."""

    body: bytes
    content_type: str
    headers: RawHeaders
    status: int


@dataclass(frozen=True, slots=True)
class _Target:
    model: str
    payload: bytes
    rename: ModelRename | None
    priority: int
    repeated: int = 0
    """Characters of a scoring request's query beyond the body's: it runs with each
    document (:func:`repeated_query_chars`)."""
    token_ids: int = 0
    """Token ids in its ``input`` (:func:`input_token_ids`)."""
    body: dict[str, Any] | None = None
    """What ``payload`` reads (None: a form), for the key's ``cache_salt``."""


def input_cost(payload: bytes, repeated: int = 0, token_ids: int = 0) -> Cost:
    """An input-only request's :class:`Cost`: the body's length in tokens (plus
    ``repeated`` characters: a scoring query's copies), a token more per token id it
    holds (an id can take 2 characters of JSON: ``1,``), and the limiter's least output
    (one token), as an embedding is priced."""
    return Cost(-(-(len(payload) + repeated) // CHARS_PER_TOKEN) + token_ids, 1, 1)


def input_token_ids(value: Any) -> int:
    """Token ids in an ``input``: a list of ids, or a list of such lists (review: priced
    by their JSON alone, short ids counted half a token each)."""
    if not isinstance(value, list) or not value:
        return 0
    if isinstance(value[0], int):
        return len(value)
    return sum(len(item) for item in value if isinstance(item, list))


def repeated_query_chars(pairing: Pairing, body: dict[str, Any]) -> int:
    """The characters a scoring request's query adds beyond the body's own: a query given
    once (or as a list of one) runs with each of its n documents, n - 1 more times than
    the body holds it. Without this, a long query against many short documents (3,000
    characters against 100 documents: ~900 tokens priced, 60,100 used) took a key far
    past its ``tpm`` in one request (review). Counted over every field name vLLM reads,
    the largest."""
    query = 0
    for name in pairing.queries:
        value = body.get(name)
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None  # n queries: one per document
        if value is not None:
            query = max(query, len(orjson.dumps(value)))
    documents = max(
        (len(value) for name in pairing.documents if isinstance(value := body.get(name), list)),
        default=1,
    )
    return query * max(documents - 1, 0)


def used_tokens(tokens: TokenUse, body: bytes) -> int | None:
    """What an answer of a route charged ``tokens`` used: its ``usage`` (an input), its
    transcript's length (speech to text); None: keep the reservation."""
    if tokens is TokenUse.INPUT:
        return body_usage(body)
    if tokens is TokenUse.TRANSCRIPT:
        return transcript_tokens(body)
    return None


def transcript_tokens(body: bytes) -> int:
    """A transcript's tokens: a token per :data:`CHARS_PER_TOKEN` characters of the JSON
    answer's ``text``, of a streamed answer's deltas, or of the whole answer when it is
    neither (``text``, ``srt``, ``vtt``); at least one."""
    length = len(body)
    if body[:1] == b"{":
        try:
            text = orjson.loads(body).get("text")
        except (orjson.JSONDecodeError, AttributeError):
            text = None
        if isinstance(text, str):
            length = len(text)
    elif body.startswith(b"data:"):
        length = _streamed_length(body)
    return max(1, -(-length // CHARS_PER_TOKEN))


def _streamed_length(body: bytes) -> int:
    """Characters of a streamed transcription's ``choices[].delta.content``."""
    length = 0
    for line in body.splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue  # [DONE]
        choices = event.get("choices") if isinstance(event, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            length += len(content) if isinstance(content, str) else 0
    return length


class PassthroughService:
    """Forwards the requests of :data:`SCOPED_ROUTES` to the engines of their model."""

    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        pool: EnginePool,
        forwarder: Forwarder,
        metrics: GatewayMetrics,
        authenticator: Authenticator,
        admission: Admission,
        routing: RoutingTable,
    ) -> None:
        self._pool = pool
        self._forwarder = forwarder
        self._metrics = metrics
        self._authenticator = authenticator
        self._admission = admission
        self._routing = routing
        self._renames = {
            name: ModelRename(m.served_name, name)
            for name, m in models.items()
            if m.served_name != name
        }
        self._engine_names = engine_names_of(models)

    async def caller(self, route: ScopedRoute, authorization: str | None) -> Principal:
        """Who is calling, from the headers alone (before the body is read): a wrong key
        is refused (401) without the gateway holding its body."""
        try:
            return await authenticate(self._authenticator, self._metrics, authorization)
        except AuthenticationError as exc:
            self._metrics.observe_request(UNRESOLVED_MODEL, route.label, exc.status, 0.0)
            raise

    async def handle(
        self, route: ScopedRoute, raw: bytes, meta: ScopedMeta, principal: Principal
    ) -> PassthroughAnswer:
        """The engine's answer to one request; every failure raised as GatewayError."""
        exchange = Exchange(route.label, self._pool, self._metrics)
        try:
            if len(raw) > OFFLOAD_BYTES:  # a large body is read off the event loop
                target = await asyncio.to_thread(
                    self._target, route, raw, meta.content_type, principal.priority
                )
            else:
                target = self._target(route, raw, meta.content_type, principal.priority)
            model = exchange.model = target.model
            check_model_allowed(principal, model, self._metrics)
            exchange.admit(
                await self._admission.admit(
                    principal.scopes(model),
                    {},  # a transcript: no length asked, default_max_tokens reserved
                    tokens=route.tokens is not TokenUse.NONE,
                    cost_of=(
                        input_cost(target.payload, target.repeated, target.token_ids)
                        if route.tokens is TokenUse.INPUT
                        else None
                    ),
                )
            )
            exchange.count_in_flight()
            policy, _ = self._routing.for_model(model)
            key = (
                meta.session_id.encode() if policy.wants_affinity_key and meta.session_id else None
            )
            content_type = meta.content_type if route.form else None
            payload, salt = target.payload, principal.salt
            if salt is not None and target.body is not None and route.tokens is TokenUse.INPUT:
                payload = salt.sent(target.body, payload)  # runs through the prefix cache
            attempt = Attempt(
                model, route.path, payload, meta.request_id, policy, key, content_type,
                key=principal.name, priority=target.priority,
            )  # fmt: skip
            try:
                _, reply = await self._forwarder.complete(exchange, attempt)
            except UpstreamStatusError as exc:
                served = model if target.rename is None else target.rename.served
                exc.renamed = renamed_for(self._engine_names, model, served, model)
                exc.prompt_param = route.prompt_param
                raise
            body = reply.body
            exchange.finished(used_tokens(route.tokens, body))
            if target.rename is not None:
                body = target.rename.inspect(body)
            return PassthroughAnswer(
                body, reply.content_type, exchange.ticket.raw_headers, reply.status
            )
        except GatewayError as exc:
            exchange.failed(exc)
            raise
        finally:
            exchange.close()

    def _target(
        self, route: ScopedRoute, raw: bytes, content_type: str | None, granted: int
    ) -> _Target:
        """The model a request names, the bytes its engine gets (the model renamed to the
        engines' name where it differs, a client's ``priority`` clamped to ``granted``,
        the key's tier) and the priority it runs at; 400 or 404 when it names no model we
        serve, 400 for a ``priority`` that is not an integer. A form's fields are
        vLLM's audio parameters, which carry no priority."""
        if route.form:
            boundary = boundary_of(content_type or "")
            span = find_field(raw, boundary, b"model")
            if span is None:
                raise _model_required()
            try:
                model = span.value.decode("utf-8")
            except UnicodeDecodeError:
                raise _model_required() from None
            rename = self._known(model)
            payload = raw
            if rename is not None:
                payload = replace_field(raw, span, rename.served.encode())
            return _Target(model, payload, rename, granted)
        body = decode_json_object(raw)
        named = body.get("model")
        if not isinstance(named, str):
            raise _model_required()
        rename = self._known(named)
        priority = body_priority(granted, body)
        changed = clamped_body(body, priority)
        if rename is not None:
            changed = (changed or body) | {"model": rename.served}
        payload = raw if changed is None else encoded_exactly(changed, raw)
        repeated = 0 if route.pairing is None else repeated_query_chars(route.pairing, body)
        ids = input_token_ids(body.get("input")) if route.tokens is TokenUse.INPUT else 0
        return _Target(named, payload, rename, priority, repeated, ids, changed or body)

    def _known(self, model: str) -> ModelRename | None:
        """404 unless ``model`` is served; its rename, if any."""
        if not model or len(model) > MAX_MODEL_NAME:
            raise _model_required()
        if not self._pool.has_model(model):
            raise ModelNotFoundError(model)
        return self._renames.get(model)


def _model_required() -> InvalidRequestError:
    return InvalidRequestError(
        "`model` is required: the name of a model this gateway serves", param="model"
    )
