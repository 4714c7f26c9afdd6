"""One request's moments, recorded as it goes, read by whatever reports on it.

A :class:`Timeline` is a handful of ``perf_counter`` floats the pipeline stores as a
request passes each stage (authenticated, limiter decided, cache looked up, admission
queue left, engine tried, first byte). Storing them is a few attribute writes: the
request path does nothing more unless someone asked for more. Its consumers read it
afterwards: the ``Server-Timing`` header of every completion answer
(:meth:`Timeline.server_timing`), and, only when they are on, the trace of the
request (:mod:`gateway.observability.tracing`), the JSON log line
(:mod:`gateway.observability.logs`) and the routing evidence
(:mod:`gateway.observability.explain`).

Those want each upstream attempt too (which engine, how it ended, why it was left):
:attr:`Timeline.attempts` is a list only when one of them is on (``detailed``), so a
request nobody watches allocates nothing for it.

A mark of 0.0 means "not reached": a cache hit never queued nor went upstream.
"""

from __future__ import annotations

from typing import Any

SERVER_TIMING = b"server-timing"
_FULL = b"auth;dur=%.3f, limit;dur=%.3f, cache;dur=%.3f, queue;dur=%.3f, upstream;dur=%.3f"


class AttemptMark:
    """One try of one engine: when it started, got its first byte and ended, and how."""

    __slots__ = ("ended", "engine", "failure", "first_byte", "span", "started", "status", "url")

    def __init__(self, url: str, engine: str, started: float) -> None:
        self.url = url
        self.engine = engine
        """The engine's short id (never its URL, which may carry credentials)."""
        self.started = started
        self.first_byte = 0.0
        self.ended = 0.0
        self.status: int | None = None
        self.failure: str | None = None
        """Why the gateway left this engine (connect, status, timeout, ...); None if it answered."""
        self.span: Any = None
        """The tracer's span of this attempt while it runs (tracing on only)."""


class Timeline:
    """Monotonic marks of one request (``perf_counter`` seconds; 0.0: not reached)."""

    __slots__ = (
        "admitted",
        "attempts",
        "authed",
        "begun",
        "limiting",
        "looked_up",
        "queue_left",
        "queued",
        "upstream_first_byte",
        "upstream_started",
    )

    def __init__(self, begun: float, detailed: bool = False) -> None:
        self.begun = begun
        self.authed = 0.0
        self.limiting = 0.0
        """The limiter was asked (with the cache lookup in the same round trip)."""
        self.admitted = 0.0
        self.looked_up = 0.0
        self.queued = 0.0
        """Entered the admission queue (the load gate) in front of the engines."""
        self.queue_left = 0.0
        self.upstream_started = 0.0
        """The first attempt's start."""
        self.upstream_first_byte = 0.0
        """The answering engine's first event (a stream) or whole reply (JSON)."""
        self.attempts: list[AttemptMark] | None = [] if detailed else None

    @property
    def detailed(self) -> bool:
        return self.attempts is not None

    def server_timing(self, upstream: bool = True) -> bytes:
        """The ``Server-Timing`` value (milliseconds) of what this request went through:
        ``auth``, ``limit`` and ``cache`` once decided, ``queue`` and ``upstream`` (time to
        the answer's first byte, failed attempts included) once it went to an engine.

        ``upstream=False``: ends at ``cache`` even when the request went to an engine,
        the form of a cache hit (a shared cache's answers: ``queue`` and ``upstream``
        would tell a tenant that no one had asked the same before)."""
        begun, authed = self.begun, self.authed
        auth = (authed - begun) * 1000.0 if authed else 0.0
        limit = (self.admitted - self.limiting) * 1000.0 if self.admitted else 0.0
        if not self.looked_up:
            return b"auth;dur=%.3f, limit;dur=%.3f" % (auth, limit)
        cache = (self.looked_up - self.admitted) * 1000.0
        started = self.upstream_started
        if not started or not upstream:
            return b"auth;dur=%.3f, limit;dur=%.3f, cache;dur=%.3f" % (auth, limit, cache)
        queue = (self.queue_left - self.queued) * 1000.0 if self.queue_left else 0.0
        first = self.upstream_first_byte
        to_first = (first - started) * 1000.0 if first else 0.0
        return _FULL % (auth, limit, cache, queue, to_first)

    def durations_ms(self) -> dict[str, float]:
        """Every stage reached, in milliseconds (for logs and evidence)."""
        spans = {
            "auth": (self.begun, self.authed),
            "limit": (self.limiting, self.admitted),
            "cache": (self.admitted, self.looked_up),
            "queue": (self.queued, self.queue_left),
            "upstream": (self.upstream_started, self.upstream_first_byte),
        }
        return {name: round((end - s) * 1000.0, 3) for name, (s, end) in spans.items() if end}


OPERATIONS = {
    "chat_completions": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "responses": "chat",
}
"""``gen_ai.operation.name`` (OpenTelemetry GenAI conventions) of each route label."""


class RequestRecord:
    """What one finished request was, for its trace and its log line (plain values:
    filled by the pipeline when the request closes, only when someone reads it)."""

    __slots__ = (
        "cache",
        "engine",
        "engine_url",
        "error",
        "first_token",
        "input_tokens",
        "key",
        "label",
        "model",
        "output_tokens",
        "request_id",
        "status",
        "stream",
        "variant",
    )

    def __init__(self, request_id: str, label: str) -> None:
        self.request_id = request_id
        self.label = label
        self.key: str | None = None
        """The key's name (never the key)."""
        self.model = ""
        """The model asked for (a rollout's name when a variant served it)."""
        self.variant: str | None = None
        self.stream = False
        self.status = 0
        self.error: str | None = None
        """The error's code (or type) when the request failed."""
        self.engine: str | None = None
        """The answering engine's short id."""
        self.engine_url: str | None = None
        self.cache: str | None = None
        """HIT, MISS, BYPASS, or None (no cache applied)."""
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.first_token = 0.0
        """A stream's first event (``perf_counter``; 0.0: none)."""

    @property
    def operation(self) -> str:
        return OPERATIONS.get(self.label, self.label)
