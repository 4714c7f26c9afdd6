"""Results and errors as HTTP: the one place that turns what the pipeline answers
(:mod:`gateway.pipeline.results`) and every :class:`GatewayError` into responses.

Streams become :class:`SSEResponse`: the pipeline's events pass through as they
arrive, a failure part way ends them with an OpenAI error event and
``data: [DONE]`` (the SDK raises ``APIError`` on it), and the request's
resources are released however the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_body
from gateway.pipeline.results import Answer, EventStream, Replay, Result

DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
JSON = "application/json"


def render(result: Result) -> Response:
    """The response for one pipeline result."""
    if isinstance(result, Answer):
        return JSONAnswer(result)
    response: Response
    if isinstance(result, EventStream):
        response = SSEResponse(sse_body(result.events), result.close, SSE_HEADERS)
    else:
        response = _replay(result)
    response.raw_headers += result.headers
    return response


def _replay(replay: Replay) -> Response:
    """A cached answer; ``X-Cache`` and ``Age`` come with its headers when the cache
    may disclose them (never when it is shared between keys)."""
    body = replay.entry.replay(replay.include_usage)
    if replay.entry.stream:
        return Response(body, headers=SSE_HEADERS, media_type="text/event-stream")
    return Response(body, media_type=JSON)


def error_event(error: GatewayError) -> bytes:
    """One SSE event carrying an OpenAI error object."""
    return b"data: " + error.body() + b"\n\n"


async def sse_body(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``events`` as they come; a failure part way becomes an error event and ``[DONE]``."""
    try:
        async for batch in events:
            yield batch
    except GatewayError as exc:
        yield error_event(exc) + DONE_EVENT


def gateway_error_response(exc: GatewayError) -> Response:
    """A :class:`GatewayError` as the response OpenAI clients expect."""
    return Response(exc.body(), exc.status, headers=exc.headers, media_type=JSON)


def internal_error_response() -> Response:
    body = error_body("internal gateway error", "internal_error", None, "internal_error")
    return Response(body, 500, media_type=JSON)


class JSONAnswer(Response):
    """An :class:`Answer` as sent: the pipeline's headers are already raw, so nothing
    is normalised again (Starlette's header set-up is a few µs of every answer)."""

    def __init__(self, answer: Answer) -> None:  # no super().__init__: it would redo this
        self.status_code = answer.status
        self.body = answer.body
        self.background = None
        self.raw_headers = [
            (b"content-length", b"%d" % len(answer.body)),
            (b"content-type", b"application/json"),
            *answer.headers,
        ]


class SSEResponse(StreamingResponse):
    """A streaming response whose cleanup runs however the stream ends.

    Starlette cancels the body iterator when the client disconnects; an iterator
    that never started would skip its ``finally``. ``on_close`` always runs.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], None],
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
            self._on_close()
