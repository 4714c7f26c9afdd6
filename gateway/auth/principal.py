"""Who is calling (:class:`Principal`), as the key directory builds it from a key in
the config or a record of the key store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.auth.keys import KeyRecord
from gateway.auth.prefix_salt import PrefixSalt
from gateway.config.priority import DEFAULT_PRIORITY
from gateway.config.sections import StaticKey
from gateway.ratelimit.limits import NO_LIMITS, Limits, LimitScope

KEY_ONLY = ""
"""The model name of requests that name none (no model's limits apply: a model's name
is never empty)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's name, the models it may use (``None``: all), its limits,
    its tier (``priority``, vLLM's scale: lower is served earlier, 0 is ``normal``),
    its A/B variants (rollout model → variant model) and the ``cache_salt`` its bodies
    carry to the engines (None: none added; :mod:`gateway.auth.prefix_salt`)."""

    name: str
    models: frozenset[str] | None
    limits: Limits = NO_LIMITS
    model_limits: Mapping[str, Limits] = field(default_factory=dict)
    expires_at: float | None = None
    priority: int = DEFAULT_PRIORITY
    variants: Mapping[str, str] = field(default_factory=dict)
    salt: PrefixSalt | None = None
    _scopes: dict[str, tuple[LimitScope, ...]] = field(default_factory=dict, compare=False)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    def scopes(self, model: str) -> tuple[LimitScope, ...]:
        """The counters a request for ``model`` is charged to (hash-tagged by key name,
        so a Redis Cluster keeps them in one slot)."""
        known = self._scopes.get(model)
        if known is None:
            known = self._scopes[model] = self._build_scopes(model)
        return known

    def key_scopes(self) -> tuple[LimitScope, ...]:
        """The key's own counters, whatever the model (requests that name none)."""
        return self.scopes(KEY_ONLY)

    def _build_scopes(self, model: str) -> tuple[LimitScope, ...]:
        tag = "{" + self.name + "}"
        per_model = self.model_limits.get(model) if model != KEY_ONLY else None
        if per_model is None:
            return (LimitScope(tag, self.limits, self.name),) if self.limits.any else ()
        scoped = LimitScope(f"{tag}:m:{model}", per_model, self.name)
        return (LimitScope(tag, self.limits, self.name), scoped) if self.limits.any else (scoped,)


ANONYMOUS = Principal("anonymous", None)
OPERATOR = Principal("(operator)", None)
"""The admin key asking for routing evidence (``x-vgate-explain: 1``): every model, no
limits (the admin key can make any key anyway); its name cannot be a key's."""


def from_static(key: StaticKey, salt: PrefixSalt | None) -> Principal:
    return Principal(
        key.name,
        frozenset(key.models) if key.models else None,
        Limits(key.rpm, key.tpm, key.max_concurrent),
        {m: Limits(v.rpm, v.tpm, v.max_concurrent) for m, v in key.model_limits.items()},
        _timestamp(key.expires_at) if key.expires_at is not None else None,
        priority=key.priority,
        variants=dict(key.variants),
        salt=salt,
    )


def _timestamp(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def from_record(record: KeyRecord, salt: PrefixSalt | None) -> Principal:
    models = frozenset(record.models) if record.models is not None else None
    return Principal(
        record.name,
        models,
        record.limits,
        dict(record.model_limits),
        record.expires_at,
        priority=record.priority,
        variants=dict(record.variants),
        salt=salt,
    )
