"""The ``upstream`` section: how the gateway talks to engines (its HTTP client, pool,
deadlines, circuit breaker and failover budget; :mod:`gateway.upstream`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class UpstreamSettings(BaseModel):
    """How the gateway talks to engines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Streams: the longest gap between chunks (and the first chunk unless "
        "ttft_timeout_s is set). Non-streaming: the whole answer unless ttft/total are set.",
    )
    ttft_timeout_s: float | None = Field(
        None, gt=0, description="Streams: request sent to first event (default: read_timeout_s)."
    )
    total_timeout_s: float | None = Field(
        None, gt=0, description="The whole response, streamed or not (default: none)."
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Connection pool size across all engines, for requests (health probes "
        "and metrics scrapes go past it: they never wait behind requests).",
    )
    max_connections_per_engine: int | None = Field(
        None,
        ge=1,
        description="Connections open to any one engine at once (default: half of "
        "max_connections), so a hung engine cannot take the whole pool from the others. A "
        "request beyond it waits for one of that engine's connections, at most "
        "connect_timeout_s, then goes to another engine of the model, else 503 overloaded "
        "(the busy engine is not marked down). At most "
        "max_connections. The lean client's (client: aiohttp has no per-engine cap: a "
        "request waits for any free connection of max_connections, with the same bound and "
        "the same 503).",
    )
    keepalive_s: float = Field(
        4.0,
        gt=0,
        description="An idle pooled connection to an engine is closed after this. Below "
        "vLLM's own idle timeout (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s), so the gateway never "
        "reuses a connection the engine is closing at that moment.",
    )
    client: Literal["lean", "aiohttp"] = Field(
        "lean",
        description="Requests to engines, probes and metrics scrapes included: lean "
        "(asyncio connections + httptools, less CPU per request) or aiohttp.",
    )
    health_interval_s: float = Field(5.0, gt=0, description="Engine /health probe period.")
    metrics_interval_s: float = Field(
        2.0, gt=0, description="Engine /metrics scrape period (queue depth for routing)."
    )
    retries: int = Field(
        1, ge=0, description="Extra attempts on another engine when a connection fails."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures that open an engine's circuit breaker."
    )
    breaker_cooldown_s: float = Field(
        10.0, gt=0, description="How long an open breaker keeps traffic off an engine."
    )
    retry_budget_ratio: float = Field(
        0.2, ge=0, description="Failovers allowed per request sent, on average (a token bucket)."
    )
    retry_budget_burst: int = Field(
        20, ge=0, description="Failovers allowed at once before the ratio applies."
    )

    @model_validator(mode="after")
    def _per_engine_within_pool(self) -> UpstreamSettings:
        cap = self.max_connections_per_engine
        if cap is not None and cap > self.max_connections:
            raise ValueError(
                "upstream.max_connections_per_engine must be at most upstream.max_connections"
            )
        return self

    @property
    def engine_connection_limit(self) -> int:
        """``max_connections_per_engine``, or half of ``max_connections`` when unset."""
        return self.max_connections_per_engine or max(1, self.max_connections // 2)
