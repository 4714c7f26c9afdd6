"""API keys made at run time (``vgate keys``, ``/admin/keys``): records and their store.

A key is stored only as its SHA-256 digest plus what it may do; the secret is
shown once, when it is made. Names are unique and are what logs, metrics and
rate-limit counters use. Backends: :mod:`gateway.backends.redis.keys` (shared by
every replica) and :mod:`gateway.backends.memory.keys` (one process, no Redis).

Records are decoded tolerantly: fields this version does not know are ignored,
at the top and inside limits (a newer vgate writes them during a rolling
upgrade, and an older gateway must keep refreshing its keys meanwhile). A record
that still cannot be decoded raises ValueError; stores skip it (see
:attr:`KeyStore.skipped_records`), so one bad record never stops key refresh.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from gateway.config.priority import DEFAULT_PRIORITY, parse_priority, tier_name
from gateway.ratelimit.limits import NO_LIMITS, Limits

SECRET_PREFIX = "sk-vg-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Matched whole (``fullmatch``: ``$`` would let a trailing newline through)."""
_DURATION = re.compile(r"([0-9]{1,12})([smhdw])")
"""Matched whole; ``[0-9]``, not ``\\d``, which (like ``int``) takes any Unicode digit."""
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FIRST_MOMENT = datetime(1, 1, 1, tzinfo=UTC).timestamp()
LAST_MOMENT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
"""The latest expiry a key may have: the last second a date can show."""


class KeyExistsError(Exception):
    """A key with this name exists already."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """Everything known about a key except its secret."""

    name: str
    digest: str
    models: tuple[str, ...] | None = None
    limits: Limits = NO_LIMITS
    model_limits: dict[str, Limits] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float | None = None
    priority: int = DEFAULT_PRIORITY
    """Its tier as a vLLM priority (lower: earlier); see :mod:`gateway.config.priority`."""
    variants: dict[str, str] = field(default_factory=dict)
    """A/B by key: rollout model → the variant this key's requests for it go to."""

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> KeyRecord:
        """The record in ``raw`` (JSON), ignoring fields this version does not know.

        Raises ValueError for anything else: not a JSON object, ``name`` or
        ``digest`` missing, a value of the wrong type (a limit must be an integer
        or null, never a boolean)."""
        data = _object(orjson.loads(raw), "a key record")  # JSONDecodeError is a ValueError
        models = data.get("models")
        if models is not None and not (
            isinstance(models, list) and all(isinstance(m, str) for m in models)
        ):
            raise ValueError("'models' must be a list of names or null")
        model_limits = _object(data.get("model_limits") or {}, "'model_limits'")
        priority = data.get("priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise ValueError("'priority' must be an integer or null")
        return cls(
            name=_text(data, "name"),
            digest=_text(data, "digest"),
            models=tuple(models) if models is not None else None,
            limits=_limits(data.get("limits") or {}),
            model_limits={str(m): _limits(v) for m, v in model_limits.items()},
            created_at=_number(data.get("created_at"), "created_at") or 0.0,
            expires_at=_number(data.get("expires_at"), "expires_at"),
            priority=parse_priority(priority) if priority is not None else DEFAULT_PRIORITY,
            variants=_variants(data.get("variants") or {}),
        )

    def public(self) -> dict[str, Any]:
        """What listings show: never the secret, nor its digest."""
        return {
            "name": self.name,
            "models": list(self.models) if self.models is not None else None,
            "rpm": self.limits.rpm,
            "tpm": self.limits.tpm,
            "max_concurrent": self.limits.max_concurrent,
            "model_limits": {m: asdict(v) for m, v in self.model_limits.items()},
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at) if self.expires_at is not None else None,
            "priority": self.priority,
            "tier": tier_name(self.priority),
            "variants": dict(self.variants),
        }


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name!r} must be a non-empty string")
    return value


def _number(value: object, name: str) -> float | None:
    """A JSON number as a float, or None for null/absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number or null")
    return float(value)


def _variants(value: object) -> dict[str, str]:
    data = _object(value, "'variants'")
    if not all(isinstance(v, str) for v in data.values()):
        raise ValueError("'variants' must map rollout names to variant names")
    return dict(data)


def _limits(value: object) -> Limits:
    """:class:`Limits` from its JSON form; unknown fields (a newer kind of limit) ignored."""
    data = _object(value, "limits")
    return Limits(_limit(data, "rpm"), _limit(data, "tpm"), _limit(data, "max_concurrent"))


def _limit(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"limit {name!r} must be an integer or null")
    return value


class KeyStore(Protocol):
    async def version(self) -> str:
        """Changes whenever a key is created or revoked."""
        ...

    async def load_all(self) -> list[KeyRecord]:
        """Every key that can be decoded; the others are skipped, logged once, counted."""
        ...

    async def get(self, digest: str) -> KeyRecord | None:
        """The record stored under ``digest``; None when there is none, or when it
        cannot be decoded (skipped)."""
        ...

    @property
    def skipped_records(self) -> int:
        """Records skipped as undecodable by :meth:`load_all` and :meth:`get`: every
        read that skips one counts it, so the count keeps rising while one remains."""
        ...

    async def create(self, record: KeyRecord) -> None:
        """Store a new key; :class:`KeyExistsError` when its name is taken."""
        ...

    async def revoke(self, name: str) -> bool:
        """Delete the key called ``name``; False when there was none."""
        ...

    async def close(self) -> None: ...


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key(
    name: str,
    models: tuple[str, ...] | None = None,
    limits: Limits = NO_LIMITS,
    expires_at: float | None = None,
    priority: int = DEFAULT_PRIORITY,
    variants: dict[str, str] | None = None,
) -> tuple[str, KeyRecord]:
    """A fresh secret and its record; raises ValueError for a bad name or expiry."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid key name {name!r}: 1-64 characters, letters, digits, '_', '.', '-'"
        )
    now = time.time()
    if expires_at is not None and expires_at <= now:
        raise ValueError("the expiry is in the past")
    if expires_at is not None and not expires_at <= LAST_MOMENT:
        raise ValueError("the expiry is after 9999-12-31T23:59:59Z: leave it out for no expiry")
    secret = new_secret()
    record = KeyRecord(
        name, digest_of(secret), models, limits, {}, now, expires_at, priority, variants or {}
    )
    return secret, record


def parse_expiry(text: str, now: float | None = None) -> float:
    """``90s``, ``12h``, ``30d``, ``2w`` from now, or an ISO 8601 date/time (UTC if no zone),
    written in ASCII (``٣s`` is not 3 s).

    Raises ValueError for anything else, an empty or blank text included (no expiry is
    the expiry left out, never an empty one); the moment may still lie out of range
    (:func:`new_key` checks it against now and :data:`LAST_MOMENT`)."""
    now = time.time() if now is None else now
    text = text.strip()
    if not text:
        raise ValueError("the expiry is empty: leave it out (or null) for no expiry")
    match = _DURATION.fullmatch(text)
    if match:
        return now + int(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        moment = datetime.fromisoformat(text) if text.isascii() else None
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(
            f"invalid expiry {text[:40]!r}: use a duration like 90s, 12h, 30d or an ISO date"
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(timestamp: float) -> str:
    """The moment in ISO 8601 (UTC, whole seconds); one beyond what a date can show
    (a record written by a version that did not bound expiries) shows as the nearest
    date that can, so listings never fail on it."""
    if not FIRST_MOMENT <= timestamp <= LAST_MOMENT:
        timestamp = LAST_MOMENT if timestamp > LAST_MOMENT else FIRST_MOMENT
    moment = datetime.fromtimestamp(timestamp, UTC)
    return (moment - timedelta(microseconds=moment.microsecond)).isoformat()
