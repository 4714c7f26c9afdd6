"""The cache's part of a request: answering a hit, filling the cache on a miss, and
following a flight (see :mod:`gateway.cache.singleflight`)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.responses import Response

from gateway.cache.entry import (
    DONE,
    ChunkWriter,
    Entry,
    StreamCollector,
    from_body,
    json_body,
    sse_replay,
)
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight
from gateway.errors import UpstreamError
from gateway.pipeline.usage import usage_tokens
from gateway.upstream.relay import SSE_HEADERS, error_event


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


def hit_response(
    entry: Entry, model: str, stream: bool, include_usage: bool, headers: dict[str, str]
) -> Response:
    """A stored answer, replayed in the form the client asked for."""
    age = max(0, int(time.time() - entry.created_at))
    headers = headers | {"X-Cache": "HIT", "Age": str(age)}
    if stream:
        body = sse_replay(entry, model, include_usage)
        return Response(body, headers=SSE_HEADERS | headers, media_type="text/event-stream")
    return Response(json_body(entry, model), headers=headers, media_type="application/json")


async def follow_events(
    flight: Flight, chat: bool, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """A follower's stream: the leader's pieces as they arrive, in fresh chunks."""
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
        entry = flight.entry
        if entry is not None and seen == len(flight.pieces):
            for choice in entry.choices:
                if choice.index not in started:
                    out.append(writer.role(choice.index))
                out.append(writer.finish(choice.index, choice.finish_reason))
            if include_usage and entry.usage is not None:
                out.append(writer.usage(entry.usage))
            yield b"".join(out) + DONE
            return
        if flight.failed:
            failure = UpstreamError("the engine answer this request shared did not complete")
            yield b"".join(out) + error_event(failure) + DONE
            return
        if out:
            yield b"".join(out)
