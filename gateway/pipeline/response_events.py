"""Relaying a streamed Responses answer: events pass as they arrive, the final
response is caught on the way.

A Responses stream is not a completions stream: every event has an ``event:``
line, and it ends with ``response.completed`` (or ``.incomplete`` / ``.failed``),
never ``data: [DONE]``, so :func:`gateway.upstream.relay.relay_events` (which
waits for ``[DONE]``) does not fit it. :func:`relay_response_events` forwards
each run of events the engine sends, through the same kind of byte taps, and
hands the terminal event's ``response`` to a callback (which stores it) before
the client gets that event: a client that continues the conversation as soon as
it sees ``response.completed`` finds it stored. A failure part way ends the
stream with an ``error`` event (OpenAI's ``ResponseErrorEvent`` fields plus an
``error`` object, on which the SDK raises ``APIError``); so does an event that is not
valid UTF-8, as on the completion routes (:func:`before_invalid_utf8`: relayed, it made
the SDK raise ``UnicodeDecodeError``), the events before it relayed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson

from gateway.errors import GatewayError, UpstreamError
from gateway.pipeline.response_failures import has_failure, told_failures
from gateway.responses.encoding import exactly_read
from gateway.upstream.relay import (
    AFTER_DONE_S,
    STREAM_ERROR,
    BatchTap,
    StreamOutcome,
    before_invalid_utf8,
    mapped_error_events,
)
from gateway.upstream.transport import EventSource

TERMINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TERMINAL_MARKS = tuple(b'"' + kind.encode() + b'"' for kind in sorted(TERMINAL_TYPES))
"""Inside a JSON string a quote is escaped, so these bytes only match a ``type`` value
(or the ``event:`` line's name, quoted nowhere): generated text never triggers a parse."""
_MARKS = (*_TERMINAL_MARKS, b'"type":"error"', STREAM_ERROR)
_SEQUENCE = b'"sequence_number":'
_DIGITS = re.compile(rb"\s*(\d{1,18})\b")


class FinalResponseTap:
    """Finds the terminal event of a stream and keeps its ``response`` object; with
    ``exact`` (the response is stored: written anew, and returned by retrieval), the
    event's data too, for :meth:`exact_response`."""

    __slots__ = ("engine_error", "exact", "response", "source")

    def __init__(self, exact: bool = False) -> None:
        self.exact = exact
        self.response: dict[str, Any] | None = None
        self.source = b""
        """The terminal event's data, kept when ``exact``."""
        self.engine_error = False
        """The engine ended the stream with an ``error`` event of its own."""

    def inspect(self, batch: bytes) -> bytes:
        if self.response is None and any(mark in batch for mark in _MARKS):
            for event in batch.split(b"\n\n"):
                self._read(event)
        return batch

    def _read(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            try:
                data = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return
            if isinstance(data, dict) and (data.get("type") == "error" or "error" in data):
                self.engine_error = True  # OpenAI's error event, or vLLM's {"error": {...}}
            if isinstance(data, dict) and data.get("type") in TERMINAL_TYPES:
                response = data.get("response")
                if isinstance(response, dict):
                    self.response = response
                    if self.exact:
                        self.source = line[5:]

    def exact_response(self) -> dict[str, Any]:
        """The terminal event's ``response`` with its integers beyond 64 bits as the
        engine wrote them (read again only when a write needs it: the rare response)."""
        response = self.response if self.response is not None else {}
        return exactly_read(self.source, response, "response") if self.source else response


class FieldRestore:
    """Puts the client's ``previous_response_id`` back into the response objects of
    the events (the engine got none): the engine writes ``null`` there."""

    __slots__ = ("_pairs",)

    def __init__(self, previous_response_id: str) -> None:
        new = b'"previous_response_id":' + orjson.dumps(previous_response_id)
        self._pairs = (
            (b'"previous_response_id":null', new),
            (b'"previous_response_id": null', new),
        )

    def inspect(self, batch: bytes) -> bytes:
        for old, new in self._pairs:
            batch = batch.replace(old, new)
        return batch


def error_event(error: GatewayError, sequence_number: int | None = None) -> bytes:
    """An ``error`` event: OpenAI's ``ResponseErrorEvent`` fields (``sequence_number``
    the one after the last event relayed, when known) and the error object."""
    data = orjson.loads(error.body())["error"]
    event: dict[str, Any] = {
        "type": "error",
        "code": data["code"],
        "message": data["message"],
        "param": data["param"],
        "error": data,
    }
    if sequence_number is not None:
        event["sequence_number"] = sequence_number
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


class SequenceMark:
    """The ``sequence_number`` of the last event relayed, for an ``error`` event that
    ends the stream (the relay's own, or the shutdown deadline's)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1

    def error_event(self, error: GatewayError) -> bytes:
        """The ``error`` event that comes next, numbered after the last one relayed."""
        return error_event(error, self.last + 1)


def last_sequence_number(batch: bytes, last: int) -> int:
    """The ``sequence_number`` of ``batch``'s last event that has one, else ``last``.
    One backward byte search per batch: inside a JSON string a quote is escaped, so
    the mark only matches the key (the events' own; response objects have none)."""
    at = batch.rfind(_SEQUENCE)
    if at < 0:
        return last
    digits = _DIGITS.match(batch, at + len(_SEQUENCE))
    return int(digits.group(1)) if digits is not None else last


async def relay_response_events(
    stream: EventSource,
    outcome: StreamOutcome,
    clock: Callable[[], float],
    taps: Sequence[BatchTap],
    final: FinalResponseTap,
    on_final: Callable[[dict[str, Any]], Awaitable[None]],
    mark: SequenceMark,
    secrets: tuple[str, ...] = (),
) -> AsyncIterator[bytes]:
    """Yield the engine's events through ``taps`` (``final`` last); once the terminal
    event has been seen, await ``on_final`` with its response, then yield it. Never
    raises a :class:`GatewayError`: a failure becomes an :func:`error_event`, numbered
    by ``mark`` (kept up to date with each batch). ``secrets`` (the engines' keys) never
    show in an engine's error."""
    next_batch = stream.next_batch
    try:
        while (received := await next_batch()) is not None:
            if outcome.first_chunk_at is None:
                outcome.first_chunk_at = clock()
            batch, broken = received, None
            if not batch.isascii():  # the SDK breaks on bytes that are not UTF-8
                batch, broken = before_invalid_utf8(batch)
            mark.last = last_sequence_number(batch, mark.last)
            if STREAM_ERROR in batch:  # vLLM's own error event, in OpenAI's shape
                batch, status = mapped_error_events(batch, "input", secrets)
                outcome.note_error_status(status)  # 5xx: for the engine's breaker
            if has_failure(batch):  # an engine's error or response.failed: no internals
                batch = told_failures(batch, secrets)
            for tap in taps:
                batch = tap.inspect(batch)
            batch = final.inspect(batch)
            if final.response is not None and not outcome.completed:
                outcome.completed = True
                await on_final(final.response)
            if batch:
                yield batch
            if outcome.completed:
                break
            if broken is not None:
                raise broken
        else:
            if not final.engine_error:
                raise UpstreamError("engine closed the stream before the response was complete")
            outcome.engine_error = True  # its answer (an error): no failure of the engine's
            return
        # The response is complete: the body's end is given a moment, not the read
        # deadline (an engine that keeps it open held the client's stream and slot).
        with contextlib.suppress(TimeoutError, GatewayError):
            async with asyncio.timeout(AFTER_DONE_S):
                await next_batch()
    except GatewayError as exc:
        outcome.error = exc
        yield mark.error_event(exc)
