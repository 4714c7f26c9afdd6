"""Pipeline results and errors written as HTTP answers, through a :class:`Responder`.

What the pipeline answers (:mod:`gateway.pipeline.results`) already carries its
headers in raw form, so an answer is its head, built once here, and its body: no
Starlette ``Response`` object, whose set-up normalises every header again. The
:class:`Responder` writes them: :class:`AsgiResponder` as ASGI messages, or the
connection's own cycle straight to the socket (:mod:`gateway.http.direct_cycle`).
Streams are written run of events by run of events as the pipeline yields them;
a failure part way ends them
with an OpenAI error event and ``data: [DONE]`` (the SDK raises ``APIError`` on
it), and the request's resources are released however the stream ends.

The headers are those Starlette's responses sent before (``content-type`` of a
stream with ``charset=utf-8``), so clients see no difference.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import Send

from gateway.errors import GatewayError, error_body
from gateway.pipeline.results import Answer, EventStream, RawHeaders, Result

DONE_EVENT = b"data: [DONE]\n\n"
JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS: RawHeaders = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_INTERNAL_ERROR = error_body("internal gateway error", "internal_error", None, "internal_error")


class Responder(Protocol):
    """Writes one answer: :class:`AsgiResponder` as ASGI messages, or
    :class:`gateway.http.direct_cycle.DirectCycle` straight to the connection."""

    async def whole(self, status: int, headers: RawHeaders, body: bytes) -> None:
        """A complete answer; ``headers`` without ``content-length`` (added here)."""
        ...

    async def begin(self, status: int, headers: RawHeaders) -> None:
        """A stream's head."""
        ...

    async def part(self, body: bytes) -> None:
        """A run of the stream's events."""
        ...

    async def end(self) -> None:
        """The stream's end."""
        ...

    def hang_up(self) -> None:
        """Close the connection now if its client is taking no bytes (a stream the
        gateway has cut: :class:`gateway.pipeline.results.ClientLine`); else nothing."""
        ...


class AsgiResponder:
    """A :class:`Responder` sending ASGI messages."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def whole(self, status: int, headers: RawHeaders, body: bytes) -> None:
        headers.append((b"content-length", b"%d" % len(body)))
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def begin(self, status: int, headers: RawHeaders) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def part(self, body: bytes) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def hang_up(self) -> None:
        """Nothing: an ASGI server gives no hold on the connection (the stream's
        resources are released by the pipeline anyway; the server's own limits end a
        connection whose client reads nothing)."""


async def respond(result: Result, responder: Responder) -> None:
    """Write one pipeline result whole (a stream: until it ends)."""
    if isinstance(result, Answer):
        await responder.whole(result.status, [JSON_TYPE, *result.headers], result.body)
    elif isinstance(result, EventStream):
        await _stream(result, responder)
    else:
        replay = result  # a cached answer; X-Cache and Age come with its headers when the
        body = replay.entry.replay(replay.include_usage)  # cache may disclose them
        if replay.entry.stream:  # framed as a relayed stream is (chunked), so that its
            await responder.begin(200, SSE_HEADERS + replay.headers)  # framing does not
            await responder.part(body)  # tell a shared cache's hit from a miss
            await responder.end()
        else:
            await responder.whole(200, [JSON_TYPE, *replay.headers], body)


async def _stream(stream: EventStream, responder: Responder) -> None:
    """The stream's events as they come; ``stream.close`` runs however it ends (the
    client leaving included: the task sending is then cancelled)."""
    line = stream.line
    if line is not None:
        line.hang_up = responder.hang_up
    try:
        await responder.begin(200, SSE_HEADERS + stream.headers)
        try:
            async for batch in stream.events:
                await responder.part(batch)
        except GatewayError as exc:
            await responder.part(error_event(exc) + DONE_EVENT)
        await responder.end()
    finally:
        if line is not None:
            line.hang_up = None
        stream.close()


async def send_result(result: Result, send: Send) -> None:
    """:func:`respond` with ASGI messages."""
    await respond(result, AsgiResponder(send))


def error_event(error: GatewayError) -> bytes:
    """One SSE event carrying an OpenAI error object."""
    return b"data: " + error.body() + b"\n\n"


async def respond_error(exc: GatewayError, responder: Responder) -> None:
    """A :class:`GatewayError` as the response OpenAI clients expect."""
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    headers.append(JSON_TYPE)
    await responder.whole(exc.status, headers, exc.body())


async def respond_internal_error(responder: Responder) -> None:
    """The 500 of an unexpected exception: nothing of it reaches the client."""
    await responder.whole(500, [JSON_TYPE], _INTERNAL_ERROR)


async def send_error(exc: GatewayError, send: Send) -> None:
    """:func:`respond_error` with ASGI messages."""
    await respond_error(exc, AsgiResponder(send))


async def send_internal_error(send: Send) -> None:
    """:func:`respond_internal_error` with ASGI messages."""
    await respond_internal_error(AsgiResponder(send))
