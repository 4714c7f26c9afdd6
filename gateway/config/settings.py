"""The one configuration model, loaded from YAML plus ``VGATE_*`` environment overrides.

Precedence, highest first: command-line flags (applied by the CLI through
:func:`with_overrides`), environment variables (``VGATE_`` prefix, ``__`` between
nested names, e.g. ``VGATE_SERVER__PORT=9000``), the YAML file (``--config`` or
``VGATE_CONFIG``), then the defaults below. Unknown keys anywhere, in the file or
in a ``VGATE_`` variable, are an error at start-up that names the key.

This is the only module that reads the environment.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from gateway.config.cache import CacheSettings
from gateway.config.models import ModelSettings, OverloadSettings
from gateway.config.responses import ResponsesSettings
from gateway.config.rollouts import RolloutSettings, pin_problem
from gateway.config.sections import (
    AuthSettings,
    EnginesSettings,
    RateLimitSettings,
    RedisSettings,
    RoutingSettings,
    ServerSettings,
)
from gateway.config.telemetry import TelemetrySettings
from gateway.config.upstream import UpstreamSettings

ENV_PREFIX = "VGATE_"
CONFIG_ENV_VAR = "VGATE_CONFIG"
# Read by the set-up scripts and by engines.models.prepare, not settings sections.
TOOL_ENV_VARS = frozenset(
    {
        CONFIG_ENV_VAR,
        "VGATE_VENV",
        "VGATE_ENGINE_VENV",
        "VGATE_MODEL_CACHE",
        "VGATE_NATIVE",  # the compiled request path: gateway/native.py
        "VGATE_NATIVE_DIR",
    }
)


class ConfigError(Exception):
    """The configuration is invalid; the message names every offending key."""


class Settings(BaseSettings):
    """Everything the gateway needs to start; immutable once built."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    models: tuple[ModelSettings, ...] = ()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    overload: OverloadSettings = OverloadSettings()
    cache: CacheSettings = CacheSettings()
    routing: RoutingSettings = RoutingSettings()
    engines: EnginesSettings = EnginesSettings()
    responses: ResponsesSettings = ResponsesSettings()
    rollouts: tuple[RolloutSettings, ...] = ()
    telemetry: TelemetrySettings = TelemetrySettings()

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: tuple[ModelSettings, ...]) -> tuple[ModelSettings, ...]:
        names = [name for m in models for name in (m.name, *m.adapter_names)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model names: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _rollouts_name_models(self) -> Settings:
        served = {name for m in self.models for name in (m.name, *m.adapter_names)}
        seen: set[str] = set()
        for rollout in self.rollouts:
            if rollout.model in served:
                raise ValueError(f"rollout {rollout.model!r} has the name of a model")
            if rollout.model in seen:
                raise ValueError(f"rollout {rollout.model!r} is declared twice")
            seen.add(rollout.model)
            shadow = [rollout.shadow.model] if rollout.shadow is not None else []
            for name in [v.model for v in rollout.variants] + shadow:
                if name not in served:
                    raise ValueError(f"rollout {rollout.model!r}: {name!r} is not in models")
        for key in self.auth.keys:
            problem = pin_problem(self.rollouts, key.variants)
            if problem is not None:
                raise ValueError(f"auth.keys {key.name!r}: {problem}")
        return self

    @model_validator(mode="after")
    def _keys_have_a_home(self) -> Settings:
        auth = self.auth
        if auth.enabled and not auth.keys and self.redis.url is None and auth.admin_key is None:
            raise ValueError(
                "auth.enabled needs keys: declare them in auth.keys, or set redis.url "
                "(keys made with `vgate keys create`) or auth.admin_key (/admin/keys)"
            )
        shared = self.redis.url is not None or self.server.workers == 1
        if not shared and (auth.admin_key is not None or any(k.any_limits for k in auth.keys)):
            raise ValueError(
                "rate limits and /admin/keys with server.workers > 1 need redis.url: "
                "without it each worker would keep its own counters and keys"
            )
        if not shared and self.responses.memory_max_bytes > 0:
            # Each worker would keep its own stored responses: one made through a worker
            # is not found (404) through another, to retrieve and previous_response_id
            # alike, and the kernel picks the worker per connection (SDK hunt: 23 of 40
            # retrieves failed). Refused as the rate limits are, naming both ways out.
            raise ValueError(
                "the Responses API's stored responses with server.workers > 1 need "
                "redis.url: without it each worker keeps its own, and a response made "
                "through one worker is not found through another; set redis.url, or "
                "responses.memory_max_bytes: 0 to store none"
            )
        return self

    @model_validator(mode="after")
    def _operator_token_apart(self) -> Settings:
        """The operator token reads every key's consumption: a client key that is also
        the token would give its tenant that (refused, as the admin key is); and it
        reads, never changes: the admin key as the token would let whoever holds the
        token (Prometheus's credentials file) make and revoke keys."""
        token = self.server.operator_token
        if token is None:
            return self
        secret = token.get_secret_value()
        if secret in {k.key for k in self.auth.keys}:
            raise ValueError("server.operator_token must differ from every key in auth.keys")
        if secret == self.auth.admin_key:
            raise ValueError("server.operator_token must differ from auth.admin_key")
        return self

    @model_validator(mode="after")
    def _one_supervisor(self) -> Settings:
        if self.server.workers > 1 and any(m.engine is not None for m in self.models):
            raise ValueError(
                "models with `engine:` need server.workers: 1 (each worker would launch its "
                "own engines); for more workers run `vgate engines run` with Redis"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)


def load_settings(config_path: Path | None = None) -> Settings:
    """Build Settings from a YAML file (or ``$VGATE_CONFIG``) and the environment."""
    path = config_path or _env_config_path()
    data = _read_yaml(path) if path is not None else {}
    _reject_unknown_env(os.environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except SettingsError as exc:  # a value that must be JSON is not: was a traceback
        raise ConfigError(_env_not_json(exc, os.environ)) from None


def with_overrides(settings: Settings, **server: Any) -> Settings:
    """Apply command-line overrides of the ``server`` section (``None`` means unset)."""
    update = {k: v for k, v in server.items() if v is not None}
    if not update:
        return settings
    try:
        section = ServerSettings.model_validate(settings.server.model_dump() | update)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, None)) from None
    return settings.model_copy(update={"server": section})


def _env_config_path() -> Path | None:
    value = os.environ.get(CONFIG_ENV_VAR)
    return Path(value) if value else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # saved as UTF-16 or Latin-1: was a traceback
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _reject_unknown_env(environ: Mapping[str, str]) -> None:
    sections = set(Settings.model_fields)
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in TOOL_ENV_VARS:
            continue
        section = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if section not in sections:
            raise ConfigError(
                f"unknown environment variable {name}: "
                f"expected {ENV_PREFIX}<section>__<key> with section one of {sorted(sections)}"
            )


def _env_not_json(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """Which variables may hold the JSON that did not parse (a list or a mapping: models,
    rollouts, auth.keys, ...), never their values: ``VGATE_AUTH__KEYS`` holds secrets."""
    field = re.search(r'field "(\w+)"', str(exc))
    section = f"{ENV_PREFIX}{field.group(1).upper()}" if field else ENV_PREFIX
    names = sorted(
        name
        for name in environ
        if name.startswith(section) and name not in TOOL_ENV_VARS
        and (field is None or name == section or name.startswith(section + "__"))
    )  # fmt: skip
    return (
        f"{' or '.join(names) or 'a ' + section + '* variable'}: not valid JSON "
        "(a list or a mapping is expected there)"
    )


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path is not None else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "<root>"
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)
