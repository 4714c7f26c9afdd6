"""Answers and errors as responses for the routes FastAPI serves.

The completion routes and ``POST /v1/responses`` are
:class:`gateway.http.hot_routes.Endpoint` s: they send their results, streams
included, straight as ASGI messages (:mod:`gateway.http.answers`). The routes
that still take a Starlette ``Request`` and return a ``Response`` (the other
Responses API routes; errors from FastAPI's exception handlers) get theirs here,
an :class:`Answer` sent the same way as an endpoint's.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, error_body
from gateway.http.answers import send_result
from gateway.pipeline.results import Answer

JSON = "application/json"


def render(answer: Answer) -> Response:
    """The response for one complete answer."""
    return AnswerResponse(answer)


class AnswerResponse(Response):
    """An :class:`Answer`, sent by :func:`gateway.http.answers.send_result`."""

    def __init__(self, answer: Answer) -> None:  # no super().__init__: nothing of it is used
        self.answer = answer
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_result(self.answer, send)


def gateway_error_response(exc: GatewayError) -> Response:
    """A :class:`GatewayError` as the response OpenAI clients expect."""
    return Response(exc.body(), exc.status, headers=exc.headers, media_type=JSON)


def internal_error_response() -> Response:
    body = error_body("internal gateway error", "internal_error", None, "internal_error")
    return Response(body, 500, media_type=JSON)
