"""A model's section of the configuration file (``models:``): where its engines are
(static endpoints or a managed ``engine:``), their credentials, and the settings a
model may override (routing, cache, timeouts, admission control).

Split from :mod:`gateway.config.sections`, whose ``_Section`` base and
``RoutingSettings`` it reuses; the rules are the same (unknown keys rejected,
immutable once built).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from engines.spec import EMBEDDED_SOURCES, EngineSpec, check_path_safe_name
from gateway.config.sections import RoutingSettings, _Section


def _without_userinfo(url: str) -> str:
    """``url`` up to its query or fragment, without credentials (an error message may
    be logged): ``scheme://host:port/path``."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    shown = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return shown.split("?", 1)[0].split("#", 1)[0]


def _check_authority(url: str, shown: str) -> None:
    """A host, and a port in 1..65535 if one is given; no space or control character."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"endpoint {shown!r} holds a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"endpoint {shown!r} has an invalid port") from None
    if not parts.hostname:
        raise ValueError(f"endpoint {shown!r} names no host")
    if port == 0:
        raise ValueError(f"endpoint {shown!r} has an invalid port")


class ModelCacheSettings(_Section):
    """One model's cache settings; unset fields follow the top-level ``cache``."""

    enabled: bool | None = None
    ttl_s: int | None = Field(None, ge=1)
    max_entry_bytes: int | None = Field(None, ge=1024)
    deterministic_only: bool | None = None


class OverloadSettings(_Section):
    """Admission control: when every engine of a model is saturated, queue, then shed."""

    max_in_flight: int | None = Field(
        None, ge=1, description="Per engine: this gateway's requests that saturate it (off)."
    )
    max_waiting: int | None = Field(
        None, ge=1, description="Per engine: queued requests (vllm:num_requests_waiting) (off)."
    )
    queue_size: int = Field(100, ge=0, description="Requests that may wait in the gateway.")
    queue_timeout_s: float = Field(5.0, gt=0, description="Longest wait before 503 overloaded.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with the 503.")


class ModelTimeouts(_Section):
    """One model's timeouts; unset ones follow the `upstream` section."""

    connect_s: float | None = Field(None, gt=0, description="Opening a connection.")
    ttft_s: float | None = Field(None, gt=0, description="Streams: until the first event.")
    idle_s: float | None = Field(None, gt=0, description="Streams: longest gap between chunks.")
    total_s: float | None = Field(None, gt=0, description="The whole response.")


class ModelSettings(_Section):
    name: str = Field(min_length=1, description="What clients put in `model`.")
    endpoints: tuple[str, ...] = Field(default=(), description="Base URLs of engines.")
    upstream_model: str | None = Field(
        None, description="The name the engines serve it under (default: `name`)."
    )
    engine: EngineSpec | None = Field(
        None, description="Engines vgate launches and supervises for this model."
    )
    routing: RoutingSettings | None = Field(
        None, description="This model's routing policy (default: the top-level `routing`)."
    )
    cache: ModelCacheSettings | None = Field(
        None, description="This model's cache settings (default: the top-level `cache`)."
    )
    timeouts: ModelTimeouts | None = Field(
        None, description="This model's timeouts (default: the `upstream` section)."
    )
    overload: OverloadSettings | None = Field(
        None, description="This model's admission control (default: the top-level `overload`)."
    )
    api_key: SecretStr | None = Field(
        None,
        min_length=1,
        description="Bearer key the gateway sends to this model's engines (vLLM's --api-key); "
        "managed engines are started with it. Unset: managed engines get a key generated "
        "at each start, static endpoints get none.",
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="The environment variable holding api_key, read when the config loads "
        "(keeps the key out of the file).",
    )
    _engine_key: str | None = PrivateAttr(None)

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        """Base URLs: ``http(s)://[user:password@]host[:port][/path]``. A query or a
        fragment is refused: request paths are appended to the URL, so it would end up
        inside them (``http://h:8000/?x=1`` would be asked ``/?x=1/v1/...``)."""
        for url in endpoints:
            shown = _without_userinfo(url)  # an error message may be logged
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {shown!r} must start with http:// or https://")
            if "?" in url or "#" in url:
                raise ValueError(
                    f"endpoint {shown!r} has a query ('?') or a fragment "
                    "('#'): give the engine's base URL, http(s)://host:port[/path]"
                )
            _check_authority(url, shown)
        return tuple(url.rstrip("/") for url in endpoints)

    @model_validator(mode="after")
    def _safe_names(self) -> ModelSettings:
        """Every character of a name printable (no control character, C0 or C1, NUL
        included, and no invisible one: the rule key model lists follow, so a key can
        name any model the config can); a managed engine's served name also names its
        log file and registry record, so it must be path-safe."""
        for name in (self.name, self.upstream_model or ""):
            if not name.isprintable():
                raise ValueError(
                    f"model name {name!r} holds a control character or an invisible one"
                )
        if self.engine is not None:
            what = "upstream_model" if self.upstream_model else "model name"
            check_path_safe_name(self.served_name, what)
            for adapter in self.engine.served_adapters():
                if adapter in {self.name, self.served_name}:
                    raise ValueError(f"LoRA adapter {adapter!r} has the model's own name")
        return self

    @model_validator(mode="after")
    def _engine_key_known(self) -> ModelSettings:
        """Resolve the engines' key now (``api_key``, or the variable ``api_key_env``
        names), so a missing variable fails the load, not the first request. Errors name
        the variable, never its value."""
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("set api_key or api_key_env, not both")
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ValueError(
                    f"api_key_env names {self.api_key_env}, which is not set (or empty)"
                )
        if key is not None and (key != key.strip() or any(ord(c) < 33 for c in key)):
            raise ValueError("the engines' api key may not hold spaces or control characters")
        self._engine_key = key
        return self

    @property
    def engine_api_key(self) -> str | None:
        """The key sent as Bearer to this model's engines (None: none configured)."""
        return self._engine_key

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """Client-facing names of the LoRA adapters its managed engines serve."""
        return self.engine.served_adapters() if self.engine is not None else ()

    @property
    def served_name(self) -> str:
        return self.upstream_model or self.name

    def engine_names(self) -> dict[str, tuple[str, ...]]:
        """Per name clients use (this model's, each LoRA adapter's of its managed
        engines), the other names the engines know it by: the served name
        (``upstream_model``), a managed engine's model directory or hub id (``source``,
        not an embedded model's keyword), an adapter's directory. Clients never see
        them: an engine's error message shows the client's name instead."""
        own = [self.served_name]
        if self.engine is not None and self.engine.source not in EMBEDDED_SOURCES:
            own.append(self.engine.source)
        names = {self.name: tuple(name for name in own if name != self.name)}
        for adapter in self.engine.lora_modules if self.engine is not None else ():
            names[adapter.name] = (adapter.path,)
        return {name: hidden for name, hidden in names.items() if hidden}


def engine_names_of(models: Mapping[str, ModelSettings]) -> dict[str, tuple[str, ...]]:
    """Every model's and adapter's :meth:`ModelSettings.engine_names`, by the name
    clients use: what an engine's error message must never show."""
    return {name: hidden for m in models.values() for name, hidden in m.engine_names().items()}


def renamed_for(
    engine_names: Mapping[str, tuple[str, ...]], model: str, served: str, asked: str
) -> tuple[str, ...] | None:
    """:attr:`gateway.errors.UpstreamStatusError.renamed` for a request for ``model``
    (as configured; ``asked`` as the client wrote it) that its engine got as ``served``:
    the engine-side names, then the client's; None when there is nothing to hide."""
    hidden = tuple(n for n in (*engine_names.get(model, ()), served) if n != asked)
    return (*dict.fromkeys(hidden), asked) if hidden else None
