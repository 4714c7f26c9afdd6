"""Pipeline results and errors sent straight as ASGI messages.

What the pipeline answers (:mod:`gateway.pipeline.results`) already carries its
headers in raw form, so an answer is one ``http.response.start`` whose header
list is built once, here, and its body: no Starlette ``Response`` object, whose
set-up normalises every header again. Streams are sent run of events by run of
events (``more_body``) as the pipeline yields them; a failure part way ends them
with an OpenAI error event and ``data: [DONE]`` (the SDK raises ``APIError`` on
it), and the request's resources are released however the stream ends.

The headers are those Starlette's responses sent before (``content-type`` of a
stream with ``charset=utf-8``), so clients see no difference.
"""

from __future__ import annotations

from starlette.types import Send

from gateway.errors import GatewayError, error_body
from gateway.pipeline.results import Answer, EventStream, RawHeaders, Replay, Result

DONE_EVENT = b"data: [DONE]\n\n"
JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS: RawHeaders = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_INTERNAL_ERROR = error_body("internal gateway error", "internal_error", None, "internal_error")


async def send_result(result: Result, send: Send) -> None:
    """Send one pipeline result whole (a stream: until it ends)."""
    if isinstance(result, Answer):
        await send_body(send, result.status, [JSON_TYPE, *result.headers], result.body)
    elif isinstance(result, EventStream):
        await send_events(result, send)
    else:
        await _send_replay(result, send)


async def send_body(send: Send, status: int, headers: RawHeaders, body: bytes) -> None:
    """A complete answer: ``headers`` (without ``content-length``, added here), then ``body``."""
    headers.append((b"content-length", b"%d" % len(body)))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_events(stream: EventStream, send: Send) -> None:
    """The stream's events as they come; ``stream.close`` runs however it ends (the
    client leaving included: the task sending is then cancelled)."""
    try:
        await send(
            {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS + stream.headers}
        )
        try:
            async for batch in stream.events:
                await send({"type": "http.response.body", "body": batch, "more_body": True})
        except GatewayError as exc:
            last = error_event(exc) + DONE_EVENT
            await send({"type": "http.response.body", "body": last, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        stream.close()


async def _send_replay(replay: Replay, send: Send) -> None:
    """A cached answer; ``X-Cache`` and ``Age`` come with its headers when the cache
    may disclose them (never when it is shared between keys)."""
    body = replay.entry.replay(replay.include_usage)
    first = SSE_HEADERS if replay.entry.stream else [JSON_TYPE]
    await send_body(send, 200, first + replay.headers, body)


def error_event(error: GatewayError) -> bytes:
    """One SSE event carrying an OpenAI error object."""
    return b"data: " + error.body() + b"\n\n"


async def send_error(exc: GatewayError, send: Send) -> None:
    """A :class:`GatewayError` as the response OpenAI clients expect."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    headers.append(JSON_TYPE)
    await send_body(send, exc.status, headers, exc.body())


async def send_internal_error(send: Send) -> None:
    """The 500 of an unexpected exception: nothing of it reaches the client."""
    await send_body(send, 500, [JSON_TYPE], _INTERNAL_ERROR)
