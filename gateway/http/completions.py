"""OpenAI completion and embeddings routes: read the body within the size limit, hand
it to the service.

The handlers take the raw request and return a ready response. ``POST`` on their
paths is served by :class:`gateway.http.hot_routes.HotRoutes` ahead of FastAPI's
middleware and routing, which would be pure overhead on the hot path; the
router entries here answer every other method (405).

A client that hangs up while a non-streaming answer is being generated cancels
the request, which closes the upstream connection so the engine stops working
for nobody (streams get the same from the streaming response itself).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.context import app_state, completion_headers, read_body, request_id
from gateway.http.render import render
from gateway.pipeline.plan import CHAT, COMPLETIONS, EMBEDDINGS, Route
from gateway.pipeline.service import RequestMeta

router = APIRouter()
CLIENT_CLOSED_REQUEST = 499  # never sent: there is nobody left to receive it


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _answer(route: Route, request: Request) -> Response:
    state = app_state(request)
    headers = completion_headers(request)
    # Refuse a wrong key (or a key over its rate) before holding its body in memory.
    principal = await state.service.caller(route, headers.authorization)
    raw = await read_body(request, state.settings.server.max_body_bytes, headers.content_length)
    handler = asyncio.current_task()
    assert handler is not None
    abandoned = False

    def client_left(watcher: asyncio.Task[None]) -> None:
        nonlocal abandoned
        if not watcher.cancelled():
            abandoned = True
            handler.cancel()

    watcher = asyncio.create_task(_until_disconnect(request))
    watcher.add_done_callback(client_left)
    try:
        meta = RequestMeta(
            request_id(request),
            headers.authorization,
            headers.session_id,
            headers.cache_control,
            principal,
        )
        return render(await state.service.handle(route, raw, meta))
    except asyncio.CancelledError:
        if not abandoned:
            raise
        handler.uncancel()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        watcher.remove_done_callback(client_left)
        watcher.cancel()


async def chat_completions(request: Request) -> Response:
    return await _answer(CHAT, request)


async def completions(request: Request) -> Response:
    return await _answer(COMPLETIONS, request)


async def embeddings(request: Request) -> Response:
    return await _answer(EMBEDDINGS, request)


router.add_route(CHAT.path, chat_completions, methods=["POST"])
router.add_route(COMPLETIONS.path, completions, methods=["POST"])
router.add_route(EMBEDDINGS.path, embeddings, methods=["POST"])
HOT_ROUTES = {
    CHAT.path: chat_completions,
    COMPLETIONS.path: completions,
    EMBEDDINGS.path: embeddings,
}
"""Served by :class:`gateway.http.hot_routes.HotRoutes` ahead of FastAPI; the router entries
above still answer other methods on these paths (405)."""
