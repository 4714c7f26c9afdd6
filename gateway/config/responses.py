"""The ``responses`` section: how long and how much of the Responses API's state the
gateway keeps (:mod:`gateway.responses`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

THIRTY_DAYS_S = 30 * 24 * 3600


class ResponsesSettings(BaseModel):
    """Stored responses live in ``redis.url`` when it is set (shared by every gateway
    replica), else in this process's memory (bounded, lost on restart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: int = Field(
        THIRTY_DAYS_S,
        ge=1,
        description="How long a stored response can be retrieved or continued "
        "(previous_response_id): 30 days, as OpenAI keeps them.",
    )
    max_stored_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="The largest stored record (the response plus the whole conversation "
        "it continues). A larger one is answered but not stored: it cannot be retrieved "
        "or continued.",
    )
    max_bytes_per_key: int | None = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="The most bytes one API key's stored responses may take together "
        "(null: no limit). A key at its limit gets 429 insufficient_quota for requests "
        "that would store (store: true, the default) until some of its responses are "
        "deleted or expire; store: false still works. One tenant cannot fill the Redis "
        "that holds every tenant's limits and keys.",
    )
    memory_max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Without Redis: the memory all stored responses may take; when full, "
        "the oldest record of the key holding the most goes first. 0: none stored "
        "(required with server.workers > 1 and no redis.url: each worker would keep its own).",
    )
