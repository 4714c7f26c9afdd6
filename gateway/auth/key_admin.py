"""Key management shared by ``vgate keys`` and ``/admin/keys``: one set of rules for both."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.auth.keys import KeyExistsError, KeyRecord, KeyStore, new_key, parse_expiry
from gateway.config.priority import DEFAULT_PRIORITY, parse_priority
from gateway.ratelimit.limits import Limits

MAX_LIMIT = 2**53
"""The largest limit a key may be given: the largest integer every JSON reader (and
Redis's Lua) holds exactly."""

MAX_VARIANTS = 64
"""The most rollouts one key may pin to a variant (a record stays small)."""
MAX_MODELS = 1000
"""The most models one key may be limited to. Far more than a gateway serves (models,
LoRA adapters and rollouts together; a key meant for all of them leaves ``models``
out), and it keeps a record under ~256 KiB at the longest names: every replica loads
every record whenever a key is created or revoked."""
MAX_MODEL_NAME = 256
"""The longest model name a key may carry (in ``models`` and ``variants``)."""


class KeyRequestError(ValueError):
    """The request to make a key is invalid; the message says why."""


class NewKey(BaseModel):
    """What a new key may be given (the body of ``POST /admin/keys``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64)
    models: list[str] | None = Field(
        None, max_length=MAX_MODELS, description="The models it may use (default: all)."
    )
    rpm: int | None = Field(None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(None, ge=1, le=MAX_LIMIT)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_LIMIT)
    expires: str | None = Field(
        None, max_length=64, description="A duration (90s, 12h, 30d) or an ISO date."
    )
    priority: int | str | None = Field(
        None, description="Its tier: high, normal, low or an integer (lower: earlier)."
    )
    variants: dict[str, str] | None = Field(
        None,
        max_length=MAX_VARIANTS,
        description="A/B by key: {rollout model: variant model}.",
    )

    @field_validator("priority")
    @classmethod
    def _tier(cls, value: int | str | None) -> int | None:
        return None if value is None else parse_priority(value)

    @field_validator("models")
    @classmethod
    def _allowed_names(cls, value: list[str] | None) -> list[str] | None:
        """Each name checked; an empty list refused: a key made with ``"models": []``
        was stored as one for every model (bug hunt), the opposite of what it says.
        Every model is ``models`` left out (or null), as ``vgate keys create`` has it."""
        if value is not None and not value:
            raise ValueError(
                "an empty list would allow no model; leave models out (or null) for all"
            )
        for name in value or ():
            _check_model_name(name, "models")
        return value

    @field_validator("variants")
    @classmethod
    def _model_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in (*(value or {}).keys(), *(value or {}).values()):
            _check_model_name(name, "variants")
        return value

    @classmethod
    def parse(cls, data: Any) -> NewKey:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]  # where: field names, as far as a name can go
            where = ".".join(shown_name(str(p)) for p in first["loc"]) or "body"
            raise KeyRequestError(f"{where}: {first['msg']}") from None


def shown_name(part: str, most: int = 64) -> str:
    """A name a client sent, as an error echoes it: cut to ``most`` characters (a key's
    name can go no further; a field's name, a variant's rollout: whatever a body holds,
    10 KB came back whole)."""
    return part if len(part) <= most else f"{part[:most]}…"


def _check_model_name(name: str, where: str) -> None:
    """A model name a key may carry: 1 to :data:`MAX_MODEL_NAME` characters, every one
    printable (no control character, as for the config's model names; no line break,
    NUL or other invisible character either)."""
    if not 0 < len(name) <= MAX_MODEL_NAME or not name.isprintable():
        raise ValueError(f"invalid model name {name[:64]!r} in {where}")


async def create_key(
    store: KeyStore, request: NewKey, taken: Collection[str]
) -> tuple[str, KeyRecord]:
    """Make and store a key; the secret is returned here and nowhere else, ever."""
    if request.name in taken:
        raise KeyRequestError(f"a key named {request.name!r} exists already")
    try:
        expires_at = parse_expiry(request.expires) if request.expires is not None else None
        secret, record = new_key(
            request.name,
            tuple(request.models) if request.models else None,
            Limits(request.rpm, request.tpm, request.max_concurrent),
            expires_at,
            priority=request.priority if isinstance(request.priority, int) else DEFAULT_PRIORITY,
            variants=dict(request.variants or {}),
        )
    except ValueError as exc:
        raise KeyRequestError(str(exc)) from None
    try:
        await store.create(record)
    except KeyExistsError:
        raise KeyRequestError(f"a key named {request.name!r} exists already") from None
    return secret, record


async def list_keys(store: KeyStore) -> list[dict[str, Any]]:
    records = sorted(await store.load_all(), key=lambda r: r.created_at)
    return [r.public() for r in records]
