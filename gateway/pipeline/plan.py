"""From a request's raw body (chat, completions, embeddings) to a plan: which model,
the exact bytes the engine gets, how to route it, and how to rename its answers.

A model can be served under another name (``upstream_model``): the engine gets
that name in the body, and every answer gets the client's name back, in JSON
bodies and in every streamed chunk, so a client never sees the engine-side name.

A request to a rollout's name is planned for the variant chosen for it
(:class:`~gateway.rollouts.choice.VariantChooser`): routing, the cache key, the
engine's body and every per-model setting are the variant's, and its answers carry
the rollout's name in ``model``, the name the client asked for (what OpenAI clients
expect); ``x-vgate-variant`` tells which variant answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.authenticator import Principal
from gateway.config.models import ModelSettings, engine_names_of
from gateway.errors import InvalidRequestError, ModelNotFoundError
from gateway.pipeline.parsing import affinity_key, decode_json_object, normalized, validate
from gateway.pool.engine_pool import EnginePool
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.protocol.exact_json import encoded_exactly
from gateway.ratelimit.cost import priced_text_chars
from gateway.rollouts.choice import VariantChooser
from gateway.routing.policies import RoutingPolicy, RoutingTable

Schema = type[ChatCompletionRequest] | type[CompletionRequest] | type[EmbeddingRequest]


@dataclass(frozen=True, slots=True)
class Route:
    """One OpenAI route through the pipeline: where it forwards, how its body is
    validated, and what kind of answer it gets."""

    path: str
    label: str
    """The metrics label."""
    schema: Schema
    cache_name: str
    """The route's part of a cache key."""
    prompt_param: str = "prompt"
    """Where the prompt is: ``param`` of a context-length error."""
    prompt_field: str = "prompt"
    """The field the affinity key reads before the messages."""
    generates: bool = True
    """Whether the engine generates tokens: an output cap applies, and sampling
    decides whether the answer may be cached. Embeddings do not."""


CHAT = Route("/v1/chat/completions", "chat_completions", ChatCompletionRequest, "chat", "messages")
COMPLETIONS = Route("/v1/completions", "completions", CompletionRequest, "completions")
EMBEDDINGS = Route(
    "/v1/embeddings", "embeddings", EmbeddingRequest, "embeddings", "input", "input", False
)


class ModelRename:
    """Puts the client's model name back into an engine's JSON answer or SSE events.

    Works on bytes, without parsing: inside a JSON string a quote is always
    escaped, so ``"model":"<served>"`` can only be the object key and its value,
    never text the model generated. Both the compact form (vLLM, the stub) and
    the form with a space after the colon are handled.
    """

    __slots__ = ("_pairs", "alias", "served")

    def __init__(self, served: str, alias: str) -> None:
        self.served = served
        """The name the engines serve the model under."""
        self.alias = alias
        """The name the client asked for."""
        old, new = orjson.dumps(served), orjson.dumps(alias)
        self._pairs = tuple(
            (b'"model"' + colon + old, b'"model"' + colon + new) for colon in (b":", b": ")
        )

    def inspect(self, batch: bytes) -> bytes:
        for old, new in self._pairs:
            batch = batch.replace(old, new)
        return batch


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class ParsedRequest:
    """A validated request, the exact bytes to send to the engine, and how to route it."""

    model: str
    stream: bool
    body: dict[str, Any]
    payload: bytes
    policy: RoutingPolicy
    affinity_key: bytes | None
    rename: ModelRename | None = None
    """Set when the engine serves the model under another name."""
    rollout: str | None = None
    """The rollout the client asked for, when ``model`` is the variant chosen for it."""


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Caps checked before validation, so an oversized request costs little to refuse."""

    max_messages: int = 4096
    max_prompt_chars: int = 2 * 1024 * 1024


OFFLOAD_BYTES = 64 * 1024
"""Bodies above this size are decoded and validated off the event loop: validating
a 2 MB body of small messages takes hundreds of milliseconds, during which every
other request of this worker would wait. In a thread the loop still gets the GIL
back every ``sys.getswitchinterval()`` (5 ms)."""


class RequestPlanner:
    """Turns a raw completion body into a :class:`ParsedRequest` (400/404 on bad input)."""

    def __init__(
        self,
        models: Mapping[str, ModelSettings],
        pool: EnginePool,
        routing: RoutingTable,
        limits: BodyLimits = BodyLimits(),
        rollouts: VariantChooser | None = None,
    ) -> None:
        self._pool = pool
        self._routing = routing
        self._limits = limits
        self._renames = {
            name: ModelRename(m.served_name, name)
            for name, m in models.items()
            if m.served_name != name
        }
        self.engine_names = engine_names_of(models)
        """Per model (or adapter) the client may name, what the engines know it by besides
        (:meth:`ModelSettings.engine_names`): an engine's error message never shows it."""
        self._rollouts = rollouts
        self._variant_renames: dict[tuple[str, str], ModelRename] = {}
        if rollouts is not None:
            self._variant_renames = {
                (rollout, variant): ModelRename(_served(models, variant), rollout)
                for rollout in rollouts.names
                for variant in rollouts.variants(rollout)
            }

    @staticmethod
    def offloads(raw: bytes) -> bool:
        """Whether ``raw`` is large enough to be parsed off the event loop
        (:meth:`parse_off_loop`) rather than on it (:meth:`parse`)."""
        return len(raw) > OFFLOAD_BYTES

    def parse(
        self, route: Route, raw: bytes, session_id: str | None, caller: Principal | None = None
    ) -> ParsedRequest:
        """The validated request, decoded and validated here, on the caller's thread.
        ``caller`` decides a rollout's variant when its key is pinned to one."""
        return self._plan(route, raw, self._read(route, raw), session_id, caller)

    async def parse_off_loop(
        self, route: Route, raw: bytes, session_id: str | None, caller: Principal | None = None
    ) -> ParsedRequest:
        """:meth:`parse` for a large body: decoded and validated in a worker thread, so
        it never holds the event loop for long."""
        read = await asyncio.to_thread(self._read, route, raw)
        return self._plan(route, raw, read, session_id, caller)

    def _plan(
        self,
        route: Route,
        raw: bytes,
        read: tuple[dict[str, Any], Any],
        session_id: str | None,
        caller: Principal | None,
    ) -> ParsedRequest:
        """Route the validated request; the engine gets the client's bytes unless the
        model is served under another name or is a rollout."""
        body, request = read
        model: str = request.model
        rollouts = self._rollouts
        if rollouts is not None and model in rollouts:
            return self._plan_variant(route, raw, body, request, session_id, caller, rollouts)
        if not self._pool.has_model(model):
            raise ModelNotFoundError(model)
        payload = raw
        rename = self._renames.get(model)
        if rename is not None:
            body = body | {"model": rename.served}
            payload = encoded_exactly(body, raw)
        policy, prefix_chars = self._routing.for_model(model)
        key = (
            affinity_key(body, session_id, prefix_chars, route.prompt_field)
            if policy.wants_affinity_key
            else None
        )
        return ParsedRequest(model, bool(request.stream), body, payload, policy, key, rename)

    def _plan_variant(
        self,
        route: Route,
        raw: bytes,
        body: dict[str, Any],
        request: Any,
        session_id: str | None,
        caller: Principal | None,
        rollouts: VariantChooser,
    ) -> ParsedRequest:
        """A request to a rollout, planned for the variant chosen for it: the engine
        gets the variant's served name, the client gets the rollout's name back."""
        rollout: str = request.model
        if caller is not None and not caller.may_use(rollout):
            # Refused right after (:func:`check_model_allowed`: 404, as for a name that
            # does not exist). Chosen first, a rollout with every weight at 0 answered
            # this key 503 ``engine_unavailable``: it learnt of a rollout it may not use.
            variant = rollouts.variants(rollout)[0]
        else:
            variant = rollouts.choose(
                rollout,
                user=body.get("user"),
                session=session_id,
                key_name=caller.name if caller is not None else None,
                pinned=caller.variants if caller is not None else None,
            )
        if not self._pool.has_model(variant):
            raise ModelNotFoundError(rollout)
        rename = self._variant_renames[(rollout, variant)]
        body = body | {"model": rename.served}
        policy, prefix_chars = self._routing.for_model(variant)
        key = (
            affinity_key(body, session_id, prefix_chars, route.prompt_field)
            if policy.wants_affinity_key
            else None
        )
        payload = encoded_exactly(body, raw)
        stream = bool(request.stream)
        return ParsedRequest(variant, stream, body, payload, policy, key, rename, rollout)

    def _read(self, route: Route, raw: bytes) -> tuple[dict[str, Any], Any]:
        body = decode_json_object(raw)
        self._check_size(route, body, len(raw))
        request = validate(route.schema, body)
        return normalized(body, request), request

    def _check_size(self, route: Route, body: dict[str, Any], size: int) -> None:
        """400 for more messages or prompt text than the limits allow, before validation.

        The count is one ``len``; the text is counted only when the body could hold
        too much of it (a character takes at least one byte of JSON), in the walk the
        token estimate makes (:func:`priced_text_chars`): every character it prices
        counts, an assistant's ``reasoning``, a ``name``, ``tools`` and
        ``chat_template_kwargs`` included, and nothing it does not (an embeddings
        request: :func:`embedding_priced`)."""
        limits = self._limits
        messages = body.get("messages")
        if isinstance(messages, list) and len(messages) > limits.max_messages:
            raise InvalidRequestError(
                f"messages: at most {limits.max_messages} messages per request",
                param="messages",
            )
        if size <= limits.max_prompt_chars:
            return
        priced = body if route.generates else embedding_priced(body, route.prompt_field)
        if priced_text_chars(priced) > limits.max_prompt_chars:
            raise InvalidRequestError(
                f"request text exceeds {limits.max_prompt_chars} characters",
                param=_text_field(body),
            )


def embedding_priced(body: dict[str, Any], prompt_field: str) -> dict[str, Any]:
    """What the token estimate reads of a request that generates nothing (embeddings),
    in the form it reads: its input as the prompt, its messages (vLLM's chat form) and
    ``chat_template_kwargs``, which vLLM hands that form's chat template as chat's (they
    can set its ``documents`` or ``tools``). Read from input and messages alone, a key
    with a 5,000-token budget embedded 10,000 tokens of ``documents`` there at a few
    (bug hunt). Nothing else of the body reaches the model."""
    return {
        "prompt": body.get(prompt_field),
        "messages": body.get("messages"),
        "chat_template_kwargs": body.get("chat_template_kwargs"),
    }


def _text_field(body: dict[str, Any]) -> str:
    """The field that holds a request's text, an error's ``param``: ``messages`` (chat,
    and vLLM's chat form of embeddings), else ``prompt`` (completions) or ``input``
    (embeddings), as for ``context_length_exceeded``."""
    if "messages" in body:
        return "messages"
    return "prompt" if "prompt" in body else "input"


_CAPS = {True: ("max_completion_tokens", "max_tokens"), False: ("max_tokens",)}
"""The fields that limit an answer's length, in the order the engine reads them (chat:
``max_completion_tokens`` unless it is 0 or null, else ``max_tokens``)."""


def output_capped(body: dict[str, Any], chat: bool, cap: int) -> dict[str, Any] | None:
    """``body`` asking for at most ``cap`` output tokens per choice, or None when it
    already asks for no more: every length field set above ``cap``, to null or to 0
    becomes ``cap``; with none set, ``"max_tokens": cap`` is added."""
    if asks_at_most(body, chat, cap):
        return None
    names = _CAPS[chat]
    present = [name for name in names if name in body]
    if present:
        return body | {name: cap for name in present if not _within(body[name], cap)}
    return body | {"max_tokens": cap}


def asks_at_most(body: dict[str, Any], chat: bool, cap: int) -> bool:
    """Whether ``body`` itself holds the engine to ``cap`` output tokens per choice
    (:func:`output_capped` would leave it as it is)."""
    asked = _asked(body, chat)
    return isinstance(asked, int) and not isinstance(asked, bool) and asked <= cap


def with_output_cap(parsed: ParsedRequest, chat: bool, cap: int) -> ParsedRequest:
    """``parsed``, asking the engine for at most ``cap`` output tokens per choice.

    Unchanged when the client already asked for no more. Otherwise every length field
    the client set above ``cap`` (or to null, or 0) becomes ``cap``, and the body is
    re-encoded; when it set none, ``"max_tokens": cap`` is spliced onto the end of the
    payload instead: the decoded body has no such key, so the bytes carry none that a
    parser could read twice, and nothing is re-encoded."""
    body = output_capped(parsed.body, chat, cap)
    if body is None:
        return parsed
    if len(body) == len(parsed.body):  # a length field was there: changed in place
        payload = encoded_exactly(body, parsed.payload)
    else:
        end = parsed.payload.rstrip()  # a JSON object: its last byte is "}"
        payload = b'%s,"max_tokens":%d}' % (end[:-1], cap)
    # Built field by field: dataclasses.replace costs 2 µs more, on every such request
    # (the unit tests check that every other field is carried over).
    return ParsedRequest(
        parsed.model,
        parsed.stream,
        body,
        payload,
        parsed.policy,
        parsed.affinity_key,
        parsed.rename,
        parsed.rollout,
    )


def _served(models: Mapping[str, ModelSettings], name: str) -> str:
    """The name engines serve ``name`` under (a LoRA adapter's name is its own)."""
    settings = models.get(name)
    return settings.served_name if settings is not None else name


def _asked(body: dict[str, Any], chat: bool) -> Any:
    """The length limit the engine reads, as vLLM does: chat's ``max_completion_tokens
    or max_tokens``, so a ``max_completion_tokens`` of 0 asks for nothing, and without
    ``max_tokens`` the answer runs to the context's end. Read as "set" (not None), a 0
    kept the body unchanged: a request of 512 reserved tokens generated unbounded
    (bug hunt)."""
    if chat:
        return body.get("max_completion_tokens") or body.get("max_tokens")
    return body.get("max_tokens")


def _within(value: Any, cap: int) -> bool:
    """Whether a length field already holds the engine to ``cap`` (a 0 does not: see
    :func:`_asked`)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= cap
