"""The sections of the configuration file, one pydantic model each.

Every section rejects unknown keys and is immutable once built; the root
:class:`gateway.config.settings.Settings` assembles them and loads them from YAML and
the environment. Field descriptions here are what README's configuration
reference documents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from engines.spec import LOG_KEEP, LOG_MAX_BYTES, LOG_MIN_MAX_BYTES
from gateway.config.priority import DEFAULT_PRIORITY, parse_priority
from gateway.config.values import redis_url, sendable_secret

MAX_MESSAGES = 4096
"""``server.max_messages``' default (the Responses API's item cap defaults to it too)."""
MAX_PROMPT_CHARS = 2 * 1024 * 1024
"""``server.max_prompt_chars``' default (the Responses API's text cap defaults to it too)."""


class _Section(BaseModel):
    """Base of every config section: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest request body (413 beyond). The default fits a vision request "
        "carrying a 10 MiB image (about 14 MB once base64-encoded) with room for the rest of "
        "the conversation.",
    )
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Bytes of request bodies one worker holds at once (bodies above 4 KiB, "
        "or sent without Content-Length, count from their first byte read until their "
        "response ends); a body that would go beyond it is refused with 503 and Retry-After. "
        "At least max_body_bytes.",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request head (request line and headers); beyond it 431 and close.",
    )
    header_timeout_s: float = Field(
        10.0,
        ge=1,
        description="A request head must be complete this long after its first byte (or, for "
        "a new connection, after it opened); else 408 and close.",
    )
    body_timeout_s: float = Field(
        60.0, ge=1, description="A request body must be complete this long after its head."
    )
    send_timeout_s: float = Field(
        60.0,
        ge=1,
        description="A client that takes none of an answer's bytes for this long (the "
        "gateway's write buffer stays full) is disconnected: its request is ended as if it "
        "had left (the engine's stream cancelled, its slot and tokens settled).",
    )
    keepalive_timeout_s: int = Field(
        75, ge=1, description="An idle connection is closed this long after its last response."
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open connections per worker process; one accepted beyond it gets a 503.",
    )
    max_messages: int = Field(
        MAX_MESSAGES,
        ge=1,
        description="Most chat messages, or Responses input items (a follow-up's whole "
        "conversation), one request may carry (400 beyond).",
    )
    max_prompt_chars: int = Field(
        MAX_PROMPT_CHARS,
        ge=1,
        description="Most characters of message text and prompts in one request, a "
        "Responses request's whole conversation included (400 beyond).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text",
        description="json: every log record as one JSON object per line, plus one line per "
        "request (request id, key name, model, variant, engine, status, tokens, timings in ms).",
    )
    admin_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="The operator listener's port: /metrics, /sd/engines, the detailed "
        "/ready and /admin/* are served there and not on the public port (unset: they stay "
        "on the public port, behind auth.admin_key).",
    )
    admin_host: str = Field("127.0.0.1", description="The operator listener's bind address.")
    operator_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="Bearer token the operator listener asks of /metrics, /sd/engines, the"
        " detailed /ready and /status (or auth.admin_key; /health open; /admin/* admin key"
        " only). Unset: open to whoever reaches it (warned of when admin_host is not"
        " loopback). Set it from VGATE_SERVER__OPERATOR_TOKEN; never logged.",
    )
    public_metrics: bool = Field(
        False, description="Also serve /metrics on the public port, to anyone (on purpose)."
    )
    debug_headers: bool = Field(
        False, description="Name the engine that answered in x-vgate-engine (its short id)."
    )
    shutdown_timeout_s: int = Field(
        25,
        ge=1,
        description="On SIGTERM the gateway stops accepting and gives requests in progress "
        "this long to finish, then cancels them and closes everything (a few seconds more, "
        "each step with its own deadline). Keep the pod's grace period above both.",
    )

    @field_validator("operator_token")
    @classmethod
    def _sendable_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None:
            sendable_secret(token.get_secret_value(), "server.operator_token")
        return token

    @model_validator(mode="after")
    def _two_ports(self) -> ServerSettings:
        if self.admin_port is not None and self.admin_port == self.port:
            raise ValueError("server.admin_port must differ from server.port")
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError(
                "server.max_body_bytes_in_flight must be at least server.max_body_bytes "
                "(or no body of the largest allowed size could ever be read)"
            )
        return self


class RoutingSettings(_Section):
    policy: Literal["least_outstanding", "round_robin", "prefix_affinity"] = "least_outstanding"
    prefix_chars: int = Field(
        1024, ge=16, description="prefix_affinity: leading prompt characters hashed."
    )
    max_imbalance: int = Field(
        8,
        ge=0,
        description="prefix_affinity: in-flight lead over the idlest engine that "
        "makes the request go to the idlest engine instead.",
    )
    priority_tiers: bool | None = Field(
        None,
        description="Carry each request's tier to vLLM: forwarded bodies get `priority` and "
        "managed vLLM engines start with --scheduling-policy priority. Unset: on when a key "
        "under auth.keys has a priority other than normal (set true when tiers are given "
        "only to keys made with `vgate keys create`). The admission queue orders by tier "
        "either way.",
    )


class RedisSettings(_Section):
    url: str | None = Field(
        None, description="Shared state: keys, rate-limit counters, engine registry."
    )
    timeout_s: float = Field(
        0.25,
        gt=0,
        description="Deadline of every Redis call, connecting included: on the request path, "
        "in background tasks (key refresh, engine registry) and in `vgate keys`.",
    )
    retry_s: float = Field(
        1.0, gt=0, description="After a failure, how long Redis is treated as down before a retry."
    )

    @field_validator("url")
    @classmethod
    def _readable_url(cls, value: str | None) -> str | None:
        return redis_url(value)


class KeyLimits(_Section):
    """Rate limits of one key (or of one key on one model); unset means unlimited."""

    rpm: int | None = Field(None, ge=1, description="Requests per minute (sliding 60 s window).")
    tpm: int | None = Field(
        None, ge=1, description="Tokens per minute: prompt + completion, reconciled to `usage`."
    )
    max_concurrent: int | None = Field(None, ge=1, description="Requests in flight at once.")

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None


class StaticKey(KeyLimits):
    """An API key declared in the config (for stateless deployments)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Shown in metrics and logs instead of the key.",
    )
    key: str = Field(min_length=8, description="The secret clients send as a Bearer token.")
    models: tuple[str, ...] = Field(
        (), description="Models it may use; omitted means all (an empty list is refused)."
    )
    model_limits: dict[str, KeyLimits] = Field(
        default_factory=dict, description="Extra limits for this key on one model."
    )
    expires_at: datetime | None = Field(None, description="Refused from then on (UTC if no zone).")
    priority: int = Field(
        DEFAULT_PRIORITY,
        description="Its tier: high, normal, low or an integer (vLLM's scale: lower is served "
        "earlier; high = -10, normal = 0, low = 10). Orders the admission queue and is sent "
        "to vLLM as the request's priority.",
    )
    variants: dict[str, str] = Field(
        default_factory=dict,
        description="A/B by key: {rollout model: variant model} pins this key's requests for "
        "that rollout to one of its variants instead of the weighted choice.",
    )

    @field_validator("priority", mode="before")
    @classmethod
    def _tier(cls, value: object) -> int:
        return parse_priority(value)

    @field_validator("key")
    @classmethod
    def _sendable(cls, key: str) -> str:
        return sendable_secret(key, "auth.keys: a key")

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: tuple[str, ...]) -> tuple[str, ...]:
        """Names as a key made through the admin API may carry: 1 to 256 printable
        characters (an empty or invisible name is a mistake that matches nothing)."""
        for name in models:
            if not 0 < len(name) <= 256 or not name.isprintable():
                raise ValueError(f"invalid model name {name[:64]!r}")
        return models

    @model_validator(mode="after")
    def _models_not_empty(self) -> StaticKey:
        """``models: []`` refused, as ``POST /admin/keys`` refuses it: an operator who
        writes "no models" must not get a key for every model (unset ``models`` is that)."""
        if "models" in self.model_fields_set and not self.models:
            raise ValueError(
                f"key {self.name!r}: `models: []` would allow no model; omit `models` for "
                "a key that may use every model"
            )
        return self

    @property
    def any_limits(self) -> bool:
        return self.limited or any(v.limited for v in self.model_limits.values())


class AuthSettings(_Section):
    enabled: bool = False
    keys: tuple[StaticKey, ...] = ()
    admin_key: str | None = Field(
        None, min_length=16, description="Bearer key for /admin/keys (unset: admin API off)."
    )
    refresh_interval_s: float = Field(
        0.25, gt=0, description="How often the key store's version is polled (revocation delay)."
    )
    unknown_keys_max: int = Field(
        10_000,
        ge=0,
        description="Unknown keys remembered as such, so repeating one costs no key-store "
        "lookup (0: none); forgotten whenever a key is created or revoked.",
    )
    unknown_keys_ttl_s: float = Field(
        10.0, gt=0, description="How long an unknown key is remembered at most."
    )

    @field_validator("admin_key")
    @classmethod
    def _sendable(cls, admin_key: str | None) -> str | None:
        return None if admin_key is None else sendable_secret(admin_key, "auth.admin_key")

    @model_validator(mode="after")
    def _usable(self) -> AuthSettings:
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("auth.keys: key names must be unique")
        if len({k.key for k in self.keys}) != len(self.keys):
            raise ValueError("auth.keys: two entries share the same key")
        if self.admin_key is not None and self.admin_key in {k.key for k in self.keys}:
            raise ValueError("auth.admin_key must differ from every key in auth.keys")
        return self


class RateLimitSettings(_Section):
    on_redis_error: Literal["local", "fail_open", "fail_closed"] = Field(
        "local",
        description="With Redis unreachable: each replica enforces its share of every limit "
        "in memory (local), admits unlimited (fail_open) or answers 503 (fail_closed).",
    )
    replicas_hint: int = Field(
        1,
        ge=1,
        description="Gateway processes sharing the limits (replicas x workers): under "
        "on_redis_error: local, each enforces every limit divided by this (at least 1).",
    )
    default_max_tokens: int = Field(
        512,
        ge=1,
        description="Completion tokens per choice a request without max_tokens may generate "
        "on a key with a tpm limit (reserved at admission, forwarded as max_tokens).",
    )
    concurrency_lease_s: float = Field(
        60.0,
        ge=1,
        description="A concurrency slot held by a gateway that died frees after this; "
        "live gateways renew their requests' slots every third of it.",
    )


class EnginesSettings(_Section):
    """Where managed engines come from and how they are published."""

    python: str | None = Field(
        None, description="Interpreter with vLLM (default: $VGATE_ENGINE_VENV or .venv-engine)."
    )
    model_cache: str | None = Field(
        None, description="Prepared models (default: $VGATE_MODEL_CACHE or ~/.cache/vgate/models)."
    )
    log_dir: str = Field("~/.cache/vgate/logs", description="One log file per engine replica.")
    log_max_bytes: int = Field(
        LOG_MAX_BYTES,
        ge=LOG_MIN_MAX_BYTES,
        description="An engine's log is rotated (at a line's end) before it passes this size.",
    )
    log_keep: int = Field(LOG_KEEP, ge=0, le=100, description="Rotated engine logs kept.")
    heartbeat_s: float = Field(2.0, gt=0, description="Registry re-publish period.")
    registry_ttl_s: float = Field(
        6.0, gt=0, description="A supervisor silent this long loses its engines."
    )
    watch_interval_s: float = Field(0.5, gt=0, description="Gateway registry poll period.")
    advertise_host: str | None = Field(
        None,
        description="Host published for engines when they bind 0.0.0.0 (e.g. the pod IP, "
        "via VGATE_ENGINES__ADVERTISE_HOST).",
    )
