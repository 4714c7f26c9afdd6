"""Server-sent events: framing constants and the relay from an engine to a client.

The relay forwards runs of complete events as they arrive (never the whole
response), notices the first chunk (time to first token) and the terminating
``data: [DONE]``, and turns an engine failure after the first byte into an
OpenAI-style error event followed by ``[DONE]``, so no client is left hanging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, UpstreamError
from gateway.upstream.client import UpstreamStream

DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class BatchTap(Protocol):
    def inspect(self, batch: bytes) -> bytes:
        """See one batch of events; return it as the client should get it."""
        ...


def error_event(error: GatewayError) -> bytes:
    """One SSE event carrying an OpenAI error object (the SDK raises APIError on it)."""
    return b"data: " + error.body() + b"\n\n"


class StreamOutcome:
    """How a relayed stream ended; filled in by :func:`relay_events`."""

    __slots__ = ("completed", "error", "first_chunk_at")

    def __init__(self) -> None:
        self.first_chunk_at: float | None = None
        self.completed = False
        self.error: GatewayError | None = None


async def relay_events(
    stream: UpstreamStream,
    outcome: StreamOutcome,
    clock: Callable[[], float],
    taps: Sequence[BatchTap] = (),
    on_done: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[bytes]:
    """Yield the engine's events; end with an error event if the engine fails mid-stream.

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
            if tail == DONE_EVENT and on_done is not None:
                await on_done()
            yield batch
    except GatewayError as exc:
        outcome.error = exc
        yield error_event(exc) + DONE_EVENT
        return
    if tail == DONE_EVENT:
        outcome.completed = True
        return
    outcome.error = _interrupted()
    yield error_event(outcome.error) + DONE_EVENT


def _interrupted() -> GatewayError:
    return UpstreamError("engine closed the stream before it was complete")


class SSEResponse(StreamingResponse):
    """A streaming response whose cleanup runs however the stream ends.

    Starlette cancels the body iterator when the client disconnects; an iterator
    that never started would skip its ``finally``. ``on_close`` always runs.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        headers: dict[str, str],
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers=headers, background=background
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()
