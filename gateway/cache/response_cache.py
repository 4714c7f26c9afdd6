"""The exact-match response cache: which requests use it, lookup, store, and its fill.

``cache.enabled`` turns it on (per model: ``models[].cache``). For each request
:meth:`ResponseCache.plan` decides, from the body and the ``Cache-Control``
request header, whether to look up and whether to store:

* ``no-store``: neither (``X-Cache: BYPASS``);
* ``no-cache``: no lookup, but the fresh answer is stored;
* ``max-age=N``: an entry older than N seconds counts as a miss;
* not cacheable (see :mod:`gateway.cache.key`): ``BYPASS``.

Tenancy: with ``cache.scope: per_key`` (the default) each API key has its own
entries, and answers say ``X-Cache: HIT|MISS|BYPASS`` (hits with ``Age``). With
``shared``, one key's answer serves every key, so answers carry neither header:
whether an answer came from the cache, and how old it is, would tell one tenant
what another asked and when (:attr:`ResponseCache.discloses`). What timing
still reveals is documented in the README ("Response cache").

Entries live in Redis (``vgate:cache:<key>``, with the TTL), or without Redis
in this process's memory (bounded). A Redis failure never fails a request: the
cache is bypassed (``X-Cache: BYPASS``), counted in ``vgate_redis_errors_total``.
The lookup is sent before the rate-limit decision is awaited, so both share
one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from gateway.cache.entry import Entry
from gateway.cache.key import KeyHasher, answer_form, fingerprint, uncacheable_reason
from gateway.cache.singleflight import Flights
from gateway.config.cache import CacheSettings
from gateway.config.models import ModelSettings
from gateway.errors import StoreUnavailable
from gateway.observability.metrics import GatewayMetrics


class EntryStore(Protocol):
    def get(self, key: str) -> asyncio.Future[bytes | None]:
        """Start a lookup now; the future holds the stored bytes or None."""
        ...

    def put(self, key: str, value: bytes, ttl_s: int) -> None: ...


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The cache settings that apply to one model."""

    enabled: bool
    ttl_s: int
    max_entry_bytes: int
    deterministic_only: bool
    fingerprint: str


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class CachePlan:
    """What the cache does for one request."""

    key: str | None  # None: bypass
    lookup: bool
    store: bool
    max_age_s: float | None
    ttl_s: int
    max_entry_bytes: int
    bypassed: bool = False  # the cache is on for this model but not used for this request
    stream: bool = False  # the answer's form: an entry of the other form is never replayed


OFF = CachePlan(None, False, False, None, 0, 0)
BYPASS = CachePlan(None, False, False, None, 0, 0, bypassed=True)


class ResponseCache:
    def __init__(
        self,
        settings: CacheSettings,
        models: Mapping[str, ModelSettings],
        store: EntryStore,
        metrics: GatewayMetrics,
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self.flights = Flights(settings.max_lag_bytes)
        self._keys = KeyHasher(settings.namespace)
        self._policies = {name: _policy(settings, m) for name, m in models.items()}
        for name, m in models.items():  # a managed engine's LoRA adapters: its policy
            for adapter in m.engine.served_adapters() if m.engine is not None else ():
                # (its fingerprint covers every adapter's path: change one, and none of
                # the old entries match; an adapter is keyed under its own name)
                self._policies.setdefault(adapter, self._policies[name])
        self._default = CachePolicy(
            settings.enabled,
            settings.ttl_s,
            settings.max_entry_bytes,
            settings.deterministic_only,
            "",
        )

    @property
    def hits_consume_tokens(self) -> bool:
        return self._settings.hits_consume_tokens

    @property
    def discloses(self) -> bool:
        """Whether answers may say what the cache did (``X-Cache``, ``Age``): only when
        entries are per key, so that they never tell one tenant of another's traffic."""
        return self._settings.scope == "per_key"

    def plan(
        self,
        route: str,
        stream: bool,
        model: str,
        body: dict[str, Any],
        key_name: str,
        cache_control: str | None,
        asked: str | None = None,
        source: bytes = b"",
    ) -> CachePlan:
        """What the cache does for one request on ``route`` (``chat``, ``completions``,
        ``embeddings``), streamed or not, by the key called ``key_name``; ``asked``: the
        rollout's name when its variant ``model`` serves the request (answers carry it);
        ``source``: the bytes ``body`` was read from (its integers beyond 64 bits are
        keyed as written, :meth:`KeyHasher.key`)."""
        policy = self._policies.get(model, self._default)
        if not policy.enabled:
            return OFF
        no_cache, no_store, max_age = _directives(cache_control)
        sampled = route != "embeddings"
        if no_store or uncacheable_reason(body, policy.deterministic_only, sampled) is not None:
            self._metrics.cache_requests.labels(model, "bypass").inc()
            return BYPASS
        scope = key_name if self._settings.scope == "per_key" else ""
        form = answer_form(stream, body)
        key = self._keys.key(
            scope, route, model, policy.fingerprint, body, form, asked or "", source
        )
        return CachePlan(
            key, not no_cache, True, max_age, policy.ttl_s, policy.max_entry_bytes, stream=stream
        )

    def begin_lookup(
        self, model: str, plan: CachePlan
    ) -> tuple[CachePlan, asyncio.Future[bytes | None] | None]:
        """Send the lookup now (it travels with the rate-limit decision); with the
        store down, the plan becomes a bypass."""
        if plan.key is None or not plan.lookup:
            return plan, None
        try:
            pending = self._store.get(plan.key)
        except StoreUnavailable:
            return self._store_down(model), None
        pending.add_done_callback(_consume)
        return plan, pending

    async def finish_lookup(
        self,
        model: str,
        plan: CachePlan,
        pending: asyncio.Future[bytes | None] | None,
        cap: int | None = None,
    ) -> tuple[CachePlan, Entry | None]:
        """The plan from here on and the usable entry (None: a miss, or the store failed).

        ``cap``: the output tokens per choice the rate limits grant this request, which
        the engine would get as its ``max_tokens`` (None: no token limit, or the keyed
        body asks for no more itself, which held every answer under its key); an entry
        made under another cap is a miss unless it is this request's answer too
        (:meth:`Entry.serves`). One that may hold more completion tokens than ``cap`` in
        a choice (:meth:`Entry.longest_choice`) stays: this request's answer, cut by its
        cap, is not stored over it."""
        if pending is None:
            return plan, None
        try:
            raw = await pending
        except StoreUnavailable:
            return self._store_down(model), None
        entry = Entry.decode(raw) if raw is not None else None
        too_old = (
            plan.max_age_s is not None
            and entry is not None
            and (time.time() - entry.created_at > plan.max_age_s)
        )
        if too_old or (entry is not None and entry.stream != plan.stream):
            entry = None
        elif entry is not None and not entry.serves(cap):
            longest = entry.longest_choice()
            if cap is not None and longest is not None and longest > cap:  # longer
                plan = replace(plan, store=False)
            entry = None
        self._metrics.cache_requests.labels(model, "hit" if entry else "miss").inc()
        self._metrics.live.cache(model, entry is not None)
        return plan, entry

    def _store_down(self, model: str) -> CachePlan:
        self._metrics.redis_errors.labels("cache").inc()
        self._metrics.cache_requests.labels(model, "bypass").inc()
        return BYPASS

    def store(self, model: str, plan: CachePlan, entry: Entry) -> None:
        """Keep a complete answer (the caller never passes a truncated one), if it is
        small enough."""
        if plan.key is None or not plan.store or len(entry.payload) > plan.max_entry_bytes:
            return
        value = entry.encode()
        if len(value) > plan.max_entry_bytes:
            return
        try:
            self._store.put(plan.key, value, plan.ttl_s)
        except StoreUnavailable:
            self._metrics.redis_errors.labels("cache").inc()
            return
        self._metrics.cache_stored_bytes.labels(model).inc(len(value))


def _policy(settings: CacheSettings, model: ModelSettings) -> CachePolicy:
    own = model.cache
    serving = model.model_dump(mode="json", include={"upstream_model", "endpoints", "engine"})
    engine = serving.get("engine")
    if isinstance(engine, dict):
        for irrelevant in ("replicas", "health", "restart", "host", "python", "gpu_ids",
                           "gpu_memory_utilization", "max_num_seqs", "env"):  # fmt: skip
            engine.pop(irrelevant, None)

    def pick(name: str) -> Any:
        value = getattr(own, name) if own is not None else None
        return getattr(settings, name) if value is None else value

    return CachePolicy(
        bool(pick("enabled")),
        int(pick("ttl_s")),
        int(pick("max_entry_bytes")),
        bool(pick("deterministic_only")),
        fingerprint(serving),
    )


def _directives(header: str | None) -> tuple[bool, bool, float | None]:
    """``(no_cache, no_store, max_age)`` from a ``Cache-Control`` request header."""
    if not header:
        return False, False, None
    no_cache = no_store = False
    max_age: float | None = None
    for part in header.lower().split(","):
        name, _, value = part.strip().partition("=")
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            with contextlib.suppress(ValueError):
                max_age = max(0.0, float(value.strip().strip('"')))
    return no_cache, no_store, max_age


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a lookup's failure as seen when nobody awaits it (the request was refused)."""
    if not future.cancelled():
        future.exception()
