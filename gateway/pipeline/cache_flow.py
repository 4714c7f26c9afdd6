"""The cache's part of a request: filling the cache on a miss, pricing a hit, and
following a flight (see :mod:`gateway.cache.singleflight`).

A fill keeps the answer as the client got it (after the model rename, before the
usage event is stripped for a client that did not ask for it): a JSON body as
is, a stream as the list of batches relayed, which the flight shares with its
followers. Nothing is parsed per chunk: a stream's id is found once by a byte
search, its usage event at the end.

Only an answer is kept or shared: a JSON body only when the engine said 200 and it
parses whole as an answer (:func:`whole_answer`: no error object, not cut short; the
store path's one parse, which gives its id and usage too), a stream only when it
ended with ``[DONE]`` and carried no error event (the relay writes every one as
:data:`gateway.upstream.relay.STREAM_ERROR` begins). An answer vLLM cut off
(``finish_reason: "abort"``: the engine dropped the request, e.g. shutting down) is
not an answer to keep either: a stream is searched for ``"finish_reason":"abort"``
(and its spaced spelling) once per batch.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from gateway.cache.entry import (
    Entry,
    IdSwap,
    completion_tokens,
    find_answer_id,
    usage_event_completion,
    usage_event_span,
)
from gateway.cache.response_cache import CachePlan, ResponseCache
from gateway.cache.singleflight import Flight, FlightFailed
from gateway.errors import SlowReaderError, UpstreamError
from gateway.pipeline.usage import UsageTap, body_usage, usage_tokens
from gateway.upstream.relay import STREAM_ERROR, StreamOutcome

ABORTED = b'"finish_reason":"abort"'
"""vLLM's ``finish_reason`` for a request it dropped part way (its answer is cut off)."""
ABORTED_SPACED = b'"finish_reason": "abort"'
"""The same, as a server writing JSON with spaces spells it."""


class CacheFill:
    """A leader's answer, collected for its followers and for the cache."""

    def __init__(
        self, cache: ResponseCache, model: str, plan: CachePlan, cap: int | None = None
    ) -> None:
        """``cap``: the output cap the gateway wrote into the engine's body where the key
        does not hold it (None: the engine got the length limit the key holds); the
        entry keeps it (:attr:`Entry.cap`)."""
        assert plan.key is not None
        self._cache = cache
        self._model = model
        self._plan = plan
        self._cap = cap
        self._key = plan.key
        self._usable = True
        self._size = 0  # bytes of the stream so far
        self.flight = cache.flights.lead(plan.key, cap)
        self._landed = False

    def inspect(self, batch: bytes) -> bytes:
        """A stream tap: shares each batch with the followers, passes it on unchanged.
        A stream that carries an error event is never stored."""
        flight = self.flight
        if not self._size:
            flight.answer_id = find_answer_id(batch)
        if STREAM_ERROR in batch or ABORTED in batch or ABORTED_SPACED in batch:
            self._usable = False
        self._size += len(batch)
        if flight.keeping and self._size > self._plan.max_entry_bytes:
            flight.stop_keeping()  # too large to store: not kept whole any more
        flight.publish(batch)
        return batch

    def finish_json(self, body: bytes, status: int = 200, parsed: Any = None) -> int | None:
        """The leader's JSON answer (as its client gets it; ``status``, the engine's) is
        complete: kept and shared if it is a whole answer (:func:`whole_answer`; one over
        ``max_entry_bytes`` is shared but not kept), else its followers go to an engine
        themselves. Returns the tokens its ``usage``
        reports, read from the same parse, so that the caller need not read them.
        ``parsed``: the body already parsed (by the forwarder's check), if it was."""
        fits = len(body) <= self._plan.max_entry_bytes
        answer = None
        # Too large to store, it is still its followers' answer (else each would call
        # an engine itself): parsed only when someone follows.
        if status == 200 and (fits or self.flight.followers):
            answer = whole_answer(body) if parsed is None else kept_answer(parsed)
        if answer is None:
            self._land(None)
            return body_usage(body)
        answer_id = answer.get("id")  # the parse's: no byte search for it
        usage = answer.get("usage")
        tokens = usage_tokens(usage)
        shown_id = answer_id if type(answer_id) is str else None
        entry = Entry(
            False, body, shown_id, tokens, completion=completion_tokens(usage), cap=self._cap
        )
        self._land(entry, store=fits)
        return tokens

    def finish_stream(self, tokens: int | None) -> None:
        """The leader's stream ended with ``[DONE]``; ``tokens`` is the usage it reported."""
        flight = self.flight
        if not self._usable:
            self._land(None)
            return
        if not flight.keeping:  # too large to store: its followers had it all, batch by batch
            self._land(Entry(True, b"", flight.answer_id, tokens), store=False)
            return
        payload = b"".join(flight.batches)
        span = usage_event_span(payload)
        completion = usage_event_completion(payload, span)
        entry = Entry(
            True, payload, flight.answer_id, tokens, span, completion=completion, cap=self._cap
        )
        self._land(entry)

    def fail(self) -> None:
        self._land(None)

    def _land(self, entry: Entry | None, store: bool = True) -> None:
        if self._landed:
            return
        self._landed = True
        if entry is None:
            self.flight.fail()
        else:
            self.flight.finish(entry)
            if store:
                self._cache.store(self._model, self._plan, entry)
        self._cache.flights.land(self._key, self.flight)


def whole_answer(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed, if it is an answer to keep: a JSON object (a body cut short
    does not parse) with a list of ``choices`` (or an embedding's ``data``), no
    ``error`` (OpenAI's error object, and vLLM's; its older one says ``"object":
    "error"``) and no choice that vLLM cut off (``finish_reason: "abort"``). About
    2 µs for a 750-byte chat answer; only a fill's answer comes here."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return kept_answer(answer)


def kept_answer(answer: Any) -> dict[str, Any] | None:
    """A parsed answer, if it is one to keep (:func:`whole_answer`)."""
    if type(answer) is not dict or answer.get("error") is not None:
        return None
    items = answer.get("choices")
    if items is None:
        items = answer.get("data")
    if type(items) is not list or answer.get("object") == "error":
        return None
    for item in items:
        if type(item) is dict and item.get("finish_reason") == "abort":
            return None
    return answer


def slow_reader(flight: Flight) -> SlowReaderError:
    """The error that ends the stream of a reader that fell too far behind ``flight``."""
    return SlowReaderError(
        f"this stream was cut: its client fell more than {flight.max_lag_bytes} bytes "
        "behind the answer shared with identical requests (cache.max_lag_bytes)"
    )


def hit_tokens(cache: ResponseCache, entry: Entry) -> int:
    """What a cached answer costs the key's token limit (0 unless configured)."""
    if not cache.hits_consume_tokens:
        return 0
    return entry.tokens or 0


async def follow_events(
    flight: Flight,
    include_usage: bool,
    outcome: StreamOutcome,
    on_done: Callable[[Entry], None],
    fresh_at: int | None = None,
    me: object = None,
) -> AsyncGenerator[bytes, None]:
    """A follower's stream: the leader's batches as they arrive, under a fresh id and
    without the usage event unless ``include_usage``; with ``fresh_at`` (a shared
    cache's follower), under an id of the form a fresh answer's has and with
    ``created`` set to it (:class:`IdSwap`).

    ``me`` is the follower as :attr:`Flight.positions` knows it (its exchange),
    placed there when it joined and removed when it leaves: its place tells the
    flight which batches it still needs. ``on_done`` gets the leader's entry before
    the last events go out; if the leader fails part way, this raises
    :class:`UpstreamError` (the HTTP edge ends the stream with an error event), and
    :class:`SlowReaderError` if this follower fell so far behind that the flight cut it
    (:attr:`Flight.cut`)."""
    swap: IdSwap | None = None
    strip = None if include_usage else UsageTap(strip=True)
    seen = 0
    positions = flight.positions  # this follower's place there: kept by ``me``
    while True:
        await flight.wait(seen)
        try:
            fresh, seen = flight.since(seen), flight.end
        except FlightFailed:  # forgotten before this follower had them: never a gap
            if me in flight.cut:
                outcome.error = slow_reader(flight)
                raise outcome.error from None
            fresh = []
            failed = True
        else:
            failed = flight.failed
            if me in positions:
                positions[me] = seen
        if fresh and swap is None:
            swap = IdSwap(flight.answer_id, fresh_at)
        out = b"".join(fresh)
        if swap is not None and out:
            out = swap.apply(out)
            if strip is not None:
                out = strip.inspect(out)
        if out and outcome.first_chunk_at is None:
            outcome.first_chunk_at = time.perf_counter()
        entry = flight.entry
        if not failed and entry is not None and seen == flight.end:
            outcome.completed = True
            on_done(entry)
            yield out
            return
        if failed:
            if strip is not None:
                out += strip.flush()  # a last chunk held back for its fingerprint
            if out:
                yield out
            error = UpstreamError("the engine answer this request shared did not complete")
            outcome.error = error
            raise error
        if out:
            yield out
