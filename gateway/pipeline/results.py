"""What the pipeline answers with: domain results that only the HTTP edge turns into
responses (:mod:`gateway.http.answers`).

Headers travel in raw form (lower-case names, bytes), ready for the ASGI server:
the rate-limit headers arrive that way from admission, and nothing re-encodes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gateway.cache.entry import Entry
from gateway.errors import GatewayError

RawHeaders = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Answer:
    """A complete JSON answer (an engine's, or a follower's copy of one)."""

    body: bytes
    headers: RawHeaders
    status: int = 200


@dataclass(slots=True)
class Replay:
    """A stored answer from the cache, replayed in the form it was stored in (a JSON
    body, or a stream's events: the stream's usage event only with ``include_usage``)."""

    entry: Entry
    include_usage: bool
    headers: RawHeaders


class ClientLine:
    """A stream's way to the HTTP edge, for a stream the gateway may end before its
    client has read it: a single-flight leader cut for falling behind its followers
    (:mod:`gateway.pipeline.leader_stream`). The edge sets :attr:`hang_up` while it
    writes the stream; :meth:`drop` calls it."""

    __slots__ = ("hang_up",)

    def __init__(self) -> None:
        self.hang_up: Callable[[], None] | None = None
        """Ends the client's connection now if its client is taking no bytes (set by
        the HTTP edge: :meth:`gateway.http.answers.Responder.hang_up`)."""

    def drop(self) -> None:
        """Stop waiting on the client: hang up on it unless it is reading (then the
        stream's end, an error event, reaches it as any stream's end does)."""
        hang_up = self.hang_up
        if hang_up is not None:
            hang_up()


@dataclass(slots=True)
class EventStream:
    """Server-sent events as they arrive. ``events`` yields runs of complete events and
    raises :class:`gateway.errors.GatewayError` if the answer fails part way;
    ``close`` releases what the request holds and must be called however the
    response ends (it is idempotent)."""

    events: AsyncIterator[bytes]
    headers: RawHeaders
    close: Callable[[], None]
    cut_event: Callable[[GatewayError], bytes] | None = None
    """The event that ends this stream when the shutdown deadline cuts it off (a
    Responses stream's ``error`` event numbered after the last one relayed); None:
    the route's own."""
    line: ClientLine | None = None
    """Set when the stream may be ended before its client reads it (see
    :class:`ClientLine`); the HTTP edge gives it a way to hang up."""


Result = Answer | Replay | EventStream
