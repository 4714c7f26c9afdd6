"""The cache's part of a request: filling the cache on a miss, pricing a hit, and
following a flight (see :mod:`gateway.cache.singleflight`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from gateway.cache.entry import (
    DONE,
    ChunkWriter,
    Entry,
    StreamCollector,
    from_body,
)
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight
from gateway.errors import UpstreamError
from gateway.pipeline.usage import usage_tokens
from gateway.upstream.relay import StreamOutcome


class CacheFill:
    """A leader's answer, collected for its followers and for the cache."""

    def __init__(self, cache: ResponseCache, model: str, plan: CachePlan, chat: bool) -> None:
        assert plan.key is not None
        self._cache = cache
        self._model = model
        self._plan = plan
        self._key = plan.key
        self._collector = StreamCollector(chat)
        self._chat = chat
        self.flight = cache.flights.lead(plan.key)
        self._landed = False

    def inspect(self, batch: bytes) -> bytes:
        """A stream tap: collects and publishes each batch, passes it on unchanged."""
        self.flight.publish(self._collector.feed(batch))
        return batch

    def finish_json(self, body: bytes) -> None:
        entry = from_body(body, self._chat)
        self._land(entry if entry is not None and entry.complete else None)

    def finish_stream(self) -> None:
        collector = self._collector
        usable = collector.usable and collector.entry.complete
        self._land(collector.entry if usable else None)

    def fail(self) -> None:
        self._land(None)

    def _land(self, entry: Entry | None) -> None:
        if self._landed:
            return
        self._landed = True
        if entry is None:
            self.flight.fail()
        else:
            self.flight.finish(entry)
            self._cache.store(self._model, self._plan, entry)
        self._cache.flights.land(self._key, self.flight)


def hit_tokens(cache: ResponseCache, entry: Entry) -> int:
    """What a cached answer costs the key's token limit (0 unless configured)."""
    if not cache.hits_consume_tokens:
        return 0
    return usage_tokens(entry.usage) or 0


async def follow_events(
    flight: Flight,
    chat: bool,
    model: str,
    include_usage: bool,
    outcome: StreamOutcome,
    on_done: Callable[[Entry], None],
) -> AsyncIterator[bytes]:
    """A follower's stream: the leader's pieces as they arrive, in fresh chunks.

    ``on_done`` gets the leader's entry before the last events go out; if the
    leader fails part way, this raises :class:`UpstreamError` (the HTTP edge ends
    the stream with an error event)."""
    writer = ChunkWriter(chat, model)
    started: set[int] = set()
    seen = 0
    while True:
        await flight.wait(seen)
        fresh, seen = flight.pieces[seen:], len(flight.pieces)
        out: list[bytes] = []
        for index, text in fresh:
            if index not in started:
                started.add(index)
                out.append(writer.role(index))
            out.append(writer.piece(index, text))
        if out and outcome.first_chunk_at is None:
            outcome.first_chunk_at = time.perf_counter()
        entry = flight.entry
        if entry is not None and seen == len(flight.pieces):
            for choice in entry.choices:
                if choice.index not in started:
                    out.append(writer.role(choice.index))
                out.append(writer.finish(choice.index, choice.finish_reason))
            if include_usage and entry.usage is not None:
                out.append(writer.usage(entry.usage))
            outcome.completed = True
            on_done(entry)
            yield b"".join(out) + DONE
            return
        if flight.failed:
            if out:
                yield b"".join(out)
            outcome.error = UpstreamError("the engine answer this request shared did not complete")
            raise outcome.error
        if out:
            yield b"".join(out)
