"""The response cache's key: a hash of the canonical request, and whether it may be cached.

Two requests share a key exactly when the engine would be asked the same thing,
on the same route, by the same model under the same settings, for the same
tenant. The key is the SHA-256 of::

    namespace | scope | route | form | model | fingerprint of what serves it | canonical body

where ``scope`` is the API key's name (``cache.scope: per_key``, the default) or
empty (``shared``), ``route`` is ``chat``, ``completions`` or ``embeddings`` (a
chat request is never answered with a cached ``text_completion``, nor the
reverse), ``form`` is how the answer travels (``json``, ``sse``, or ``sse+stats``
when the client asked for usage in every chunk: an entry is the answer's bytes,
and a stream cannot be turned into a JSON body faithfully, nor back), and the
canonical body is the request JSON without the fields below marked "ignored",
its top-level fields sorted by name, and integral numbers normalised (``1.0`` →
``1``, ``-0.0`` → ``0``) where the engine reads them as numbers: a field's own value
and the numbers of its lists (``temperature``, ``max_tokens``, a prompt's token ids),
never inside an object (a tool's JSON schema, a message, ``chat_template_kwargs``:
the chat template writes those into the prompt as text, where ``1.0`` and ``1``
differ), serialised compactly, an integer beyond 64 bits as its digits (the parser
reads it as a float: two that round alike are two requests); at most
:data:`NORMALISED_ITEMS` list items per body are looked at for that, the lists past
them key as written. Fields vgate does not know about count: an unknown field may
change the output, so it is never ignored.

Key order is normalised only where it provably cannot reach the engine's input:
the top level, whose fields the engine reads by name. Inside every field, objects
keep the client's key order, since that order can be the prompt or the output's
shape: a chat template renders ``tools`` and ``chat_template_kwargs`` values with
``tojson``, which keeps insertion order; guided decoding (``response_format``'s
``json_schema``, ``guided_json``, ``structured_outputs``) generates properties in
schema order. Two tool schemas that differ only in key order are two prompts, so
two keys. Messages keep theirs too: vLLM reads a message's own fields by name, but
passes some values on to the template as they came (``tool_calls``), and another
engine or template may render a message or a part whole (``tojson``); clients (the
SDKs) write messages in one order, so keeping it costs almost no hits, while
sorting could make two prompts share an answer.

================================  ==========  =========================================
field                             key         why
================================  ==========  =========================================
``model``                         counts      (as the client named it) plus the serving
                                              fingerprint: engine source, dtype,
                                              quantization, speculative config, served
                                              name, endpoints — change any, new keys
``messages`` / ``prompt``         counts      the input
``temperature``, ``top_p``,       counts      sampling changes the output
``top_k``, ``min_p``, ``seed``,
``presence_penalty``,
``frequency_penalty``,
``repetition_penalty``
``max_tokens``,                   counts      where the answer is cut
``max_completion_tokens``,
``stop``, ``stop_token_ids``,
``ignore_eos``, ``min_tokens``
``response_format``, ``tools``,   counts      shape of the answer (tool calls, reasoning
``tool_choice``, ``logit_bias``,              and logprobs are stored and replayed as
``logprobs``, ``echo``, ``suffix``            the engine sent them)
``n``                             counts      only ``n`` = 1 is cached
any other field                   counts      unknown effect: assume it matters
``stream``                        form        a stream and a JSON answer are two entries
``stream_options``                form        usage is always stored, shown on request;
                                              ``continuous_usage_stats`` (with usage)
                                              is another form; set without ``stream``
                                              (which vLLM refuses), another too
``user``                          ignored     who asks does not change the answer
                                              (``scope`` splits tenants by API key)
``request_id``, ``metadata``,     ignored     bookkeeping, not generation
``store``, ``service_tier``
================================  ==========  =========================================

Cacheable by default: deterministic requests only (``temperature`` 0, or an
explicit integer ``seed``) with ``n`` = 1. Tool calls, reasoning and logprobs
are cached too: given the request they are as deterministic as the text (the
same sampling decides them), and the entry keeps them byte for byte. Embeddings
are always deterministic: cached whenever the cache is on. A model's
``cache.deterministic_only: false`` also caches sampled answers.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.protocol.exact_json import encoded_exactly

IGNORED_FIELDS = frozenset(
    {"stream", "stream_options", "user", "request_id", "metadata", "store", "service_tier"}
)
_UNKEYED = IGNORED_FIELDS | {"model"}
"""Fields left out of the canonical body (the model is keyed apart, as named)."""


_INT_RANGE = 2**63
"""Integral floats inside ±2**63 become ints; larger ones (``1e300``) stay floats, as
the serialiser writes integers of at most 64 bits."""


def canonical(value: Any) -> Any:
    """``value`` with integral floats as ints and ``-0.0`` as ``0``, recursively
    (for :func:`fingerprint`, whose settings' key order is fixed by the serialiser).
    Bodies are at most :data:`gateway.pipeline.parsing.MAX_DEPTH` levels deep, well
    inside Python's recursion limit."""
    if type(value) is str:  # the most common value by far: nothing to normalise
        return value
    if isinstance(value, float):
        return _integral(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def _integral(value: float) -> int | float:
    """``value`` as an int when it is one (``1.0`` → ``1``, ``-0.0`` → ``0``) within
    :data:`_INT_RANGE`, else as it is."""
    return int(value) if value.is_integer() and -_INT_RANGE < value < _INT_RANGE else value


NORMALISED_ITEMS = 4096
"""The most list items one body's key looks at in Python (:func:`_number_normalised`)."""


def _number_normalised(value: Any, left: list[int]) -> Any:
    """``value`` as :func:`canonical` makes it, through lists only: inside an object
    (a tool's schema, a message, template arguments) numbers are kept as written, since
    the engine may render them into the prompt as text (``1.0`` is not ``1`` there).

    ``left``: how many more list items the body's key may walk (one counter for the
    whole body). A list that would take it below zero is kept as written, unwalked:
    its integral floats stay floats, so ``[1.0, ...]`` and ``[1, ...]`` get two
    entries (a miss, never a collision: the same body always gets the same key). A
    prompt of token ids walked item by item cost ~0.3 µs an id on the event loop,
    7 million ids most of a second; nested lists of lists did not escape it."""
    if isinstance(value, float):
        return _integral(value)
    if isinstance(value, list):
        remaining = left[0] - len(value)
        if remaining < 0:
            return value
        left[0] = remaining
        return [_number_normalised(v, left) for v in value]
    return value


def answer_form(stream: bool, body: dict[str, Any]) -> str:
    """How the answer travels: ``json``, ``sse``, or ``sse+stats`` (usage in every
    chunk: vLLM's ``continuous_usage_stats``, which applies only with usage). A JSON
    request with ``stream_options`` set is ``json+options``: vLLM refuses it (400), so
    it must not be answered with the entry of the same request without them."""
    options = body.get("stream_options")
    if not stream:
        return "json+options" if options else "json"
    if (
        isinstance(options, dict)
        and options.get("continuous_usage_stats")
        and (options.get("include_usage"))
    ):
        return "sse+stats"
    return "sse"


def cache_key(
    namespace: str,
    scope: str,
    route: str,
    model: str,
    fingerprint: str,
    body: dict[str, Any],
    form: str = "json",
    asked: str = "",
    source: bytes = b"",
) -> str:
    """The hex key of one request (``body`` as the client sent it) on ``route``, answered
    in ``form`` (:func:`answer_form`). ``asked``: the name the client asked for when
    another ``model`` serves it (a rollout's variant): its answers carry that name, so
    they are kept apart from the same model's asked for by another name. ``source``: the
    bytes ``body`` was read from: an integer beyond 64 bits, which the parser read as a
    float, is keyed by its digits (two such integers that round to the same float are
    two requests, two keys)."""
    digest = _prefix_digest(namespace, scope, route, form, model, fingerprint, asked)
    digest.update(_canonical_body(body, source))
    return digest.hexdigest()


class KeyHasher:
    """:func:`cache_key` for one namespace, with the digest of everything but the body
    (scope, route, form, model, fingerprint, asked name) worked out once per
    combination and copied for each request: a request then hashes only its body.
    Past ``limit`` combinations (keys times models times forms) it starts over."""

    def __init__(self, namespace: str, limit: int = 4096) -> None:
        self._namespace = namespace
        self._limit = limit
        self._prefixes: dict[tuple[str, str, str, str, str, str], hashlib._Hash] = {}

    def key(
        self,
        scope: str,
        route: str,
        model: str,
        fingerprint: str,
        body: dict[str, Any],
        form: str = "json",
        asked: str = "",
        source: bytes = b"",
    ) -> str:
        """``cache_key(namespace, scope, route, model, fingerprint, body, form, asked,
        source)``."""
        parts = (scope, route, form, model, fingerprint, asked)
        prefix = self._prefixes.get(parts)
        if prefix is None:
            if len(self._prefixes) >= self._limit:
                self._prefixes.clear()
            prefix = _prefix_digest(self._namespace, *parts)
            self._prefixes[parts] = prefix
        digest = prefix.copy()
        digest.update(_canonical_body(body, source))
        return digest.hexdigest()


def _prefix_digest(
    namespace: str, scope: str, route: str, form: str, model: str, fingerprint: str, asked: str
) -> hashlib._Hash:
    """SHA-256 fed with everything a key hashes before the body."""
    digest = hashlib.sha256()
    for part in (namespace, scope, route, form, model, fingerprint):
        digest.update(part.encode())
        digest.update(b"\x00")
    if asked:
        digest.update(b"asked\x00" + asked.encode() + b"\x00")
    return digest


def _canonical_body(body: dict[str, Any], source: bytes) -> bytes:
    """The body's keyed fields in canonical form (see the module's table): the top-level
    fields sorted by name, every object inside them in the client's key order, integers
    beyond 64 bits as written in ``source`` (:func:`encoded_exactly`: a search of the
    encoding for a float of 1e16 or more, the source read only when there is one)."""
    left = [NORMALISED_ITEMS]
    kept = {k: _number_normalised(body[k], left) for k in sorted(body) if k not in _UNKEYED}
    return encoded_exactly(kept, source)


def uncacheable_reason(
    body: dict[str, Any], deterministic_only: bool, sampled: bool = True
) -> str | None:
    """Why this request must not be cached, or None when it may be. ``sampled``: the
    route generates text (embeddings do not: always deterministic)."""
    if not sampled:
        return None
    n = body.get("n")
    if n not in (None, 1):
        return "n > 1"
    if not deterministic_only:
        return None
    temperature, seed = body.get("temperature"), body.get("seed")
    if temperature == 0 or (isinstance(seed, int) and not isinstance(seed, bool)):
        return None
    return "sampled (temperature is not 0 and no seed)"


def fingerprint(parts: dict[str, Any]) -> str:
    """A short, stable digest of whatever serves a model (its settings as JSON)."""
    encoded = orjson.dumps(canonical(parts), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:16]
