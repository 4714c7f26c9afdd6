"""The relay of an engine's server-sent events towards a client.

It forwards runs of complete events as they arrive (never the whole response),
notices the first chunk (time to first token) and the terminating
``data: [DONE]``, and raises a :class:`GatewayError` when the engine fails after
the first byte, so the HTTP edge can end the client's stream with an error event
and ``[DONE]`` instead of leaving it hanging. An error event the engine sends
itself (vLLM: ``data: {"error": {..., "type": "BadRequestError", "code": 400}}``;
older vLLM: ``data: {"object": "error", "message": ..., "code": 400}``; with or
without the space after ``data:``, behind an ``event:`` line or over several
``data:`` lines) is rewritten in OpenAI's shape
(:func:`gateway.errors.openai_error`), always as :data:`STREAM_ERROR` begins, so
that the taps (the cache) need look for one spelling only. One byte search per
batch (``"error"``, which only a key, a value or a delta that is exactly that word
can hold); only the events holding it are looked at, and only one that is an
error is parsed.

``[DONE]`` ends the stream for the client: events an engine sends after it (in the
same read or later) are dropped, never relayed behind it, and the stream is not
failed for them. ``data:[DONE]`` (no space) counts too and is relayed as
:data:`DONE_EVENT`. One more byte search per batch (``[DONE]`` before the batch's
last event); only a batch holding it there is split into events.

An event that is not valid UTF-8 ends the stream (:data:`NOT_UTF8`, a 502): SSE is
UTF-8, and a client (the OpenAI SDK) that decodes it breaks on one, so it is not
relayed, nor kept by the cache (a stream is kept only once it reaches ``[DONE]``); the
events before it in its batch go out first. Batches hold whole events (the framer
cuts at blank lines, which no multi-byte character holds), so a character is never
split between two. The check costs one ``isascii`` per batch (about 15 ns for a
140-byte chunk), and a decode (about 100 ns more) only for a batch that is not ASCII.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

import orjson

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError, openai_error
from gateway.upstream.transport import EventSource

DONE_EVENT = b"data: [DONE]\n\n"
AFTER_DONE_S = 0.25
"""How long the body's end is awaited after ``[DONE]`` (it usually comes with it)."""
DONE_WORD = b"[DONE]"
STREAM_ERROR = b'data: {"error"'
"""How an error event starts once relayed (:func:`mapped_error_events` writes every
one so): what a tap looks for."""
ERROR_WORD = b'"error"'
"""In every spelling of an engine's error event: the relay's one search per batch."""
_ERROR_FIRST = re.compile(rb'\{\s*"error"\s*:')
"""An event's data that is an object whose first key is ``error`` (vLLM's, OpenAI's)."""
_OBJECT_ERROR = re.compile(rb'"object"\s*:\s*"error"')
"""vLLM's older error object (``"object": "error"``, its fields at the top level)."""
NOT_UTF8 = "the engine sent an event that is not valid UTF-8"
"""The message of the error that ends a stream at such an event."""


class BatchTap(Protocol):
    def inspect(self, batch: bytes) -> bytes:
        """See one batch of events; return it as the client should get it."""
        ...


class StreamOutcome:
    """How a relayed stream ended; filled in by :func:`relay_events`."""

    __slots__ = (
        "chunks",
        "completed",
        "engine_error",
        "engine_error_status",
        "error",
        "first_chunk_at",
    )

    def __init__(self) -> None:
        self.first_chunk_at: float | None = None
        self.chunks = 0
        """Batches of events received from the engine (the status page's ITL: the
        stream's time after its first chunk over the gaps between chunks)."""
        self.completed = False
        self.error: GatewayError | None = None
        self.engine_error = False
        """The engine sent an error event of its own (its answer to the request)."""
        self.engine_error_status = 0
        """The highest status of those error events (vLLM's ``code``): 5xx is the
        engine's own failure, for its circuit breaker, however the stream ended."""

    def note_error_status(self, status: int) -> None:
        """An error event of the engine's with ``status`` was relayed."""
        if status > self.engine_error_status:
            self.engine_error_status = status

    def engine_failed(self) -> bool:
        """Whether the engine failed the stream, for its circuit breaker: its transport
        failed before ``[DONE]`` (the connection closed or broke, a read deadline passed,
        its framing could not be read). Not a stream that completed, nor one its client
        left (no error), nor one the engine ended with an error event of its own (a
        prompt too long for the context: its answer to the request, not a failure)."""
        error = self.error
        if error is None or self.completed or self.engine_error:
            return False
        return type(error) is UpstreamError or type(error) is UpstreamTimeoutError


async def relay_events(
    stream: EventSource,
    outcome: StreamOutcome,
    clock: Callable[[], float],
    taps: Sequence[BatchTap] = (),
    on_done: Callable[[], None] | None = None,
    prompt_param: str = "messages",
    secrets: tuple[str, ...] = (),
) -> AsyncGenerator[bytes, None]:
    """Yield the engine's events; raise a :class:`GatewayError` if it fails mid-stream.

    ``taps`` see every batch in turn (the cache collects it, the usage tap may
    remove the usage event); ``on_done`` runs once the engine has sent
    ``[DONE]``, before the client receives it. ``prompt_param`` names the prompt's
    field in a mapped context-length error; ``secrets`` (the engines' keys) never show
    in an engine's error event.
    """
    next_batch = stream.next_batch
    try:
        while (received := await next_batch()) is not None:
            outcome.chunks += 1
            if outcome.first_chunk_at is None:
                outcome.first_chunk_at = clock()
            batch = received
            done = batch[-len(DONE_EVENT) :] == DONE_EVENT
            if batch.find(DONE_WORD, 0, len(batch) - 8 if done else len(batch)) >= 0:
                batch, done = through_done(batch)  # a [DONE] before the end
            broken: UpstreamError | None = None
            if not batch.isascii():
                batch, broken = before_invalid_utf8(batch)
                done = done and broken is None
            if ERROR_WORD in batch:
                batch, status = mapped_error_events(batch, prompt_param, secrets)
                if status:
                    outcome.engine_error = True
                    outcome.note_error_status(status)
            for tap in taps:
                batch = tap.inspect(batch)
            if done:
                outcome.completed = True
                if on_done is not None:
                    on_done()
                if batch:
                    yield batch
                break
            if batch:
                yield batch
            if broken is not None:
                raise broken
        else:
            outcome.error = UpstreamError("engine closed the stream before it was complete")
            raise outcome.error
        # After [DONE] the body should end; anything more is dropped (and the
        # connection, its answer unfinished, is not reused). An engine that keeps the
        # body open after it is given a moment, not the read deadline: the client's
        # answer ends here, and its slot with it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(AFTER_DONE_S):
                await next_batch()
    except GatewayError as exc:
        if outcome.completed:
            return  # the client has its whole answer: a fault after [DONE] is no failure
        outcome.error = exc
        held = b"".join(flush() for tap in taps if (flush := getattr(tap, "flush", None)))
        if held:  # a tap held events back for what was to follow: they go out first
            yield held
        raise


def through_done(batch: bytes) -> tuple[bytes, bool]:
    """``batch`` up to and including its ``[DONE]`` event (written as
    :data:`DONE_EVENT`) and True; ``batch`` and False when no event is ``[DONE]``."""
    events = batch.split(b"\n\n")
    for i, event in enumerate(events):
        if event == b"data: [DONE]" or event == b"data:[DONE]":
            return b"".join(e + b"\n\n" for e in events[:i]) + DONE_EVENT, True
    return batch, False


def before_invalid_utf8(batch: bytes) -> tuple[bytes, UpstreamError | None]:
    """``batch`` and None when it is valid UTF-8; else its events before the first
    that is not, and the error that ends the stream there."""
    try:
        batch.decode()
    except UnicodeDecodeError as exc:
        cut = batch.rfind(b"\n\n", 0, exc.start)
        return batch[: cut + 2] if cut >= 0 else b"", UpstreamError(NOT_UTF8)
    return batch, None


def mapped_error_events(
    batch: bytes, prompt_param: str, secrets: tuple[str, ...] = ()
) -> tuple[bytes, int]:
    """``batch`` with every engine error event in OpenAI's shape (``secrets`` never in
    its message: :func:`gateway.errors.openai_error`), written as
    :data:`STREAM_ERROR` begins (the status is vLLM's ``code``, 400 when it has none),
    and the highest status of those events; ``(batch, 0)``, ``batch`` itself, when it
    holds none."""
    events = batch.split(b"\n\n")
    found = 0
    for i, event in enumerate(events):
        if ERROR_WORD not in event:
            continue
        data = _event_data(event)
        if data is None:
            continue  # a delta that is the word "error" is looked at no further
        payload: bytes | None = None
        if _ERROR_FIRST.match(data) is not None:
            payload = data
        elif _OBJECT_ERROR.search(data) is not None:
            payload = _older_error(data)
        if payload is None:
            continue
        status = _status_of(payload)
        events[i] = b"data: " + openai_error(status, payload, prompt_param, None, secrets)
        found = max(found, status)
    return (b"\n\n".join(events), found) if found else (batch, 0)


def _event_data(event: bytes) -> bytes | None:
    """An event's data (its ``data:`` lines' values joined by LF, as SSE reads them;
    one leading space of each dropped), or None when it has none."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].lstrip()  # the usual event: one data line
    values = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(values) if values else None


def _older_error(payload: bytes) -> bytes | None:
    """vLLM's older error object (``{"object": "error", "message", "type", "code"}``) as
    its newer one (``{"error": {...}}``); None if ``payload`` is not one (a chunk with an
    ``"object": "error"`` deeper down). One that is not JSON stays as it is: an error
    still (:func:`gateway.errors.openai_error` keeps its text as the message)."""
    try:
        data: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if not isinstance(data, dict) or data.get("object") != "error":
        return None
    return orjson.dumps({"error": {k: v for k, v in data.items() if k != "object"}})


def _status_of(payload: bytes) -> int:
    """vLLM's error ``code`` (the HTTP status it would have answered), else 400."""
    try:
        error = orjson.loads(payload).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return 400
    return code if isinstance(code, int) and 400 <= code <= 599 else 400
