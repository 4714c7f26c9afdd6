"""What the gateway needs from a connection to its engines, as a Protocol.

:class:`gateway.upstream.lean.LeanUpstream` implements it over pooled asyncio
connections parsed by httptools, :class:`gateway.upstream.client.UpstreamClient`
over one pooled aiohttp session (``upstream.client`` chooses, through
:mod:`gateway.upstream.factory`); :class:`gateway.upstream.fake.FakeUpstream` implements it in
process for tests (in the spirit of httpx's ``MockTransport``). The pipeline and
the pool depend on this module only, never on aiohttp or httptools.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.upstream.deadlines import Deadlines

MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""The largest non-streaming answer taken from an engine (probes and metrics scrapes
included): past it the answer is an engine error (502), never held whole. vLLM's
largest legitimate answers (a batch of embeddings as JSON floats, prompt logprobs)
stay well below it; an engine that sends without end would otherwise grow the
gateway until the read deadline."""


CLOSED_MID_ANSWER = "the engine closed the connection mid-answer"
"""What a client is told when an engine's connection ended before its answer did.
Transport failures are told in such plain words, never as the library exception that
reported them (``ClientPayloadError``, ``HttpParserError``, ...): that detail is the
gateway operator's, logged where the failure is translated."""
INVALID_RESPONSE = "the engine sent an invalid HTTP response"
"""What a client is told when an engine's answer could not be parsed as HTTP."""
CONNECTION_BROKE = "the connection to the engine broke"
"""What a client is told of any other failure of the connection to an engine (a reset)."""


def too_large_answer() -> str:
    """Why an answer past :data:`MAX_ANSWER_BYTES` was refused."""
    return f"an answer larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB"


def redirect_refused(status: int) -> str:
    """Why an engine's redirect (``3xx``) was refused: the gateway follows none (it
    would send the request, and the engine's key, wherever the engine says)."""
    return f"HTTP {status}, a redirect, instead of an answer"


class EngineUnreachable(Exception):
    """The connection to an engine failed before any response; safe to retry elsewhere."""


class EngineBusy(EngineUnreachable):
    """No connection to the engine came free within ``connect_s``: every one the pool
    may open to it (or every one of the pool) is serving. Busy, not down: the engine's
    health and circuit breaker are left alone (a hung engine is found by its health
    probe, which never waits for the pool)."""


class StreamWithoutEvents(Exception):
    """The engine's stream ended, as a whole answer ends, before its first event: the
    engine answered (its head came, then the end of its body), with nothing to relay.
    Not :class:`EngineUnreachable` (nothing says another engine would do better, and it
    may have generated an answer the gateway cannot read); the forwarder answers it
    as a 502."""


def stream_refused(status: int, content_type: str) -> str | None:
    """Why an engine's head cannot begin a relayed stream, or None when it can: a
    stream is relayed as ``200 text/event-stream``; an engine that answers a stream
    request with another 2xx (``226``, ``299``) or another media type (a whole JSON
    answer) answered something else, which is never relayed as events (nor sent to
    another engine: it may have generated its answer already)."""
    if status == 200 and content_type == "text/event-stream":
        return None
    if status != 200:
        return f"a stream request answered with HTTP {status}, not 200"
    return f"a stream request answered with {content_type[:60]}, not text/event-stream"


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class UpstreamReply:
    """A complete non-streaming engine response."""

    status: int
    content_type: str
    body: bytes
    answer: Any = None
    """The body parsed, once the forwarder checked that a 2xx JSON answer is JSON (so
    that nothing after it parses it again); None otherwise."""
    retry_after: bytes | str | None = None
    """An error answer's ``Retry-After`` as the engine sent it (read on errors only;
    :func:`gateway.errors.relayed_retry_after` decides what of it the client gets)."""
    retry_after_ms: bytes | str | None = None
    """An error answer's ``retry-after-ms``, likewise."""


class EventSource(Protocol):
    """An open SSE response from an engine; iterate it, and always close it.

    Closing before the end tells the engine that nobody is listening any more
    (vLLM then aborts the generation).
    """

    deadline: float | None
    """Loop time by which the whole stream must have ended (None: no limit)."""

    async def prime(self) -> None:
        """Read the first events now, so a failure before them can still go elsewhere.

        Raises :class:`StreamWithoutEvents` when the engine's body ends first.
        """
        ...

    async def next_batch(self) -> bytes | None:
        """The next run of complete SSE events (each ending in a blank line), waiting
        for one; None at the stream's end. Failures raise
        :class:`gateway.errors.GatewayError`. (What the relays call for every run: one
        coroutine, where iterating :meth:`batches` adds an async generator's layer.)"""
        ...

    def batches(self) -> AsyncIterator[bytes]:
        """The same runs, as an async iterator."""
        ...

    def close(self) -> None: ...


class PrimedEvents(ABC):
    """What every :class:`EventSource` shares: ``prime`` reads the first events early
    (a failure before them can still go to another engine), ``batches`` yields those,
    then the rest. A subclass says only how to read the next run of events."""

    _first: bytes | None = None

    async def prime(self) -> None:
        """Read the first events now; :class:`StreamWithoutEvents` when the engine's body
        ends first (a connection that breaks first raises what the reads raise)."""
        self._first = await self._next_batch()
        if self._first is None:
            raise StreamWithoutEvents("the engine's stream ended before its first event")

    async def next_batch(self) -> bytes | None:
        """The primed first run of events, then each next one; None at the end."""
        first = self._first
        if first is not None:
            self._first = None
            return first
        return await self._next_batch()

    async def batches(self) -> AsyncIterator[bytes]:
        """Yield runs of complete SSE events (each ending in a blank line) as they arrive."""
        while (batch := await self.next_batch()) is not None:
            yield batch

    @abstractmethod
    async def _next_batch(self) -> bytes | None:
        """The next run of complete events (waiting for one); None at the stream's end."""


class Upstream(Protocol):
    """Requests to engines. Transport failures are raised as :class:`EngineUnreachable`
    (nothing reached the engine) or :class:`gateway.errors.GatewayError`."""

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> UpstreamReply:
        """POST and read the whole answer; error statuses come back as replies."""
        ...

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> EventSource:
        """POST and return once the engine answered 2xx; an error status raises
        :class:`gateway.errors.UpstreamStatusError` with the engine's body."""
        ...

    async def probe(self, url: str, headers: Mapping[str, str] | None = None) -> bool:
        """True when the engine's ``/health`` answers 200 quickly."""
        ...

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        """``GET url`` as text, or None (engine metrics scraping)."""
        ...
