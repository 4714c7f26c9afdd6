"""The relay of an engine's server-sent events towards a client.

It forwards runs of complete events as they arrive (never the whole response),
notices the first chunk (time to first token) and the terminating
``data: [DONE]``, and raises a :class:`GatewayError` when the engine fails after
the first byte, so the HTTP edge can end the client's stream with an error event
and ``[DONE]`` instead of leaving it hanging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

from gateway.errors import GatewayError, UpstreamError
from gateway.upstream.transport import EventSource

DONE_EVENT = b"data: [DONE]\n\n"


class BatchTap(Protocol):
    def inspect(self, batch: bytes) -> bytes:
        """See one batch of events; return it as the client should get it."""
        ...


class StreamOutcome:
    """How a relayed stream ended; filled in by :func:`relay_events`."""

    __slots__ = ("completed", "error", "first_chunk_at")

    def __init__(self) -> None:
        self.first_chunk_at: float | None = None
        self.completed = False
        self.error: GatewayError | None = None


async def relay_events(
    stream: EventSource,
    outcome: StreamOutcome,
    clock: Callable[[], float],
    taps: Sequence[BatchTap] = (),
    on_done: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """Yield the engine's events; raise a :class:`GatewayError` if it fails mid-stream.

    ``taps`` see every batch in turn (the cache collects it, the usage tap may
    remove the usage event); ``on_done`` runs once the engine has sent
    ``[DONE]``, before the client receives it.
    """
    tail = b""
    try:
        async for received in stream.batches():
            if outcome.first_chunk_at is None:
                outcome.first_chunk_at = clock()
            batch = received
            for tap in taps:
                batch = tap.inspect(batch)
            if not batch:
                continue
            tail = batch[-len(DONE_EVENT) :]
            if tail == DONE_EVENT:
                outcome.completed = True
                if on_done is not None:
                    on_done()
            yield batch
    except GatewayError as exc:
        outcome.error = exc
        raise
    if tail != DONE_EVENT:
        outcome.error = UpstreamError("engine closed the stream before it was complete")
        raise outcome.error
