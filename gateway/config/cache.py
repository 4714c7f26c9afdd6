"""The ``cache`` section: the gateway's response cache, and whether API keys share the
engines' prefix cache (``engine_prefix_scope``, :mod:`gateway.auth.prefix_salt`).

Split from :mod:`gateway.config.sections`, whose ``_Section`` base it uses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config.sections import _Section
from gateway.config.values import redis_url


class CacheSettings(_Section):
    enabled: bool = Field(False, description="Exact-match response cache (Redis, else memory).")
    ttl_s: int = Field(3600, ge=1, description="How long an entry lives.")
    max_entry_bytes: int = Field(
        1024 * 1024, ge=1024, description="Larger answers are served but not stored."
    )
    max_lag_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        description="Single flight: how far one client of a shared stream (the first "
        "request's included) may fall behind the engine before its stream is cut with an "
        "error event; the others go on at the engine's pace.",
    )
    engine_prefix_scope: Literal["per_key", "shared"] = Field(
        "per_key",
        description="per_key: every body forwarded for an API key carries vLLM's "
        "`cache_salt`, derived from the key, so keys never share the engines' prefix cache "
        "(no key can time another's prompts through it); shared: bodies go as the client "
        "sent them (engines that refuse unknown fields, or one prefix cache for every key).",
    )
    scope: Literal["shared", "per_key"] = Field(
        "per_key",
        description="per_key: each API key has its own entries (with auth off, every caller "
        "is one key); shared: one entry for every key, answers then say nothing of the cache.",
    )
    deterministic_only: bool = Field(
        True, description="Cache only temperature-0 or seeded requests (n = 1)."
    )
    hits_consume_tokens: bool = Field(
        False, description="Charge a hit's usage to the key's tokens-per-minute limit."
    )
    namespace: str = Field("v1", min_length=1, description="Change it to start from empty.")
    memory_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Without Redis: the in-process cache's size."
    )
    redis_url: str | None = Field(
        None,
        description="The Redis holding cache entries (unset: redis.url). A Redis of its own "
        "can evict (maxmemory + allkeys-lru) without ever evicting rate-limit counters or keys.",
    )

    @field_validator("redis_url")
    @classmethod
    def _readable_url(cls, value: str | None) -> str | None:
        return redis_url(value)
