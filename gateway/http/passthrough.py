"""vLLM's model-scoped routes (``/tokenize``, ``/v1/score``, audio, ...): thin handlers
over :class:`gateway.pipeline.passthrough.PassthroughService`.

Only the paths of :data:`SCOPED_ROUTES` are routed; every other vLLM route
(``/v1/load_lora_adapter``, ``/sleep``, ``/collective_rpc``, ...) has no route
here and answers 404 in OpenAI's format. A request still running at the shutdown
deadline is answered 503 ``shutting_down``, as a completion is
(:class:`gateway.http.shutdown_cut.CutAtDeadline`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

from gateway.errors import NotFoundError
from gateway.http.context import app_state, completion_headers, read_body, request_id
from gateway.http.shutdown_cut import CutAtDeadline
from gateway.pipeline.passthrough import SCOPED_ROUTES, ScopedMeta, ScopedRoute

router = APIRouter()


def _handler(route: ScopedRoute) -> Callable[[Request], Awaitable[Response]]:
    async def forward(request: Request) -> Response:
        state = app_state(request)
        service = state.passthrough
        if service is None:
            raise NotFoundError(f"no route POST {route.path}")
        headers = completion_headers(request.scope["headers"])
        # Refuse a wrong key before holding its body in memory.
        principal = await service.caller(route, headers.authorization)
        raw = await read_body(
            request.receive, state.settings.server.max_body_bytes, headers.content_length
        )
        meta = ScopedMeta(
            request_id(request), request.headers.get("content-type"), headers.session_id
        )
        answer = await service.handle(route, raw, meta, principal)
        response = Response(answer.body, answer.status, media_type=answer.content_type or None)
        response.raw_headers += answer.headers
        return response

    forward.__name__ = f"forward_{route.label}"
    return forward


for _route in SCOPED_ROUTES:
    # An ASGI app as the endpoint: Starlette serves it as it is (its hints only admit
    # request handlers, as for gateway.http.hot_routes.add_endpoint).
    _endpoint = CutAtDeadline(request_response(_handler(_route)))
    router.add_route(_route.path, cast(Any, _endpoint), methods=["POST"])
