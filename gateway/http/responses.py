"""The Responses API routes: thin, each hands its request to
:class:`gateway.pipeline.responses.ResponsesService` and renders what it answers.

Every route identifies the caller from the headers first (401 before any body is
read). A client that hangs up while a non-streaming response is being generated
cancels the request, which closes the upstream connection so the engine stops.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import NotFoundError
from gateway.http.completions import CLIENT_CLOSED_REQUEST
from gateway.http.context import app_state, completion_headers, read_body, request_id
from gateway.http.render import render
from gateway.pipeline.responses import PATH, ResponsesService

router = APIRouter()


def _service(request: Request) -> ResponsesService:
    service = app_state(request).responses
    if service is None:
        raise NotFoundError(f"no route {request.method} {request.url.path}")
    return service


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def create(request: Request) -> Response:
    service = _service(request)
    headers = completion_headers(request)
    principal = await service.caller(headers.authorization)
    limit = app_state(request).settings.server.max_body_bytes
    raw = await read_body(request, limit, headers.content_length)
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
        result = await service.create(raw, principal, request_id(request), headers.session_id)
        return render(result)
    except asyncio.CancelledError:
        if not abandoned:
            raise
        handler.uncancel()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        watcher.remove_done_callback(client_left)
        watcher.cancel()


async def retrieve(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request).authorization)
    return render(await service.retrieve(request.path_params["response_id"], principal))


async def delete(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request).authorization)
    return render(await service.delete(request.path_params["response_id"], principal))


async def cancel(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request).authorization)
    return render(await service.cancel(request.path_params["response_id"], principal))


async def input_items(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request).authorization)
    query = dict(request.query_params)
    response_id = request.path_params["response_id"]
    return render(await service.input_items(response_id, principal, query))


router.add_route(PATH, create, methods=["POST"])
router.add_route(PATH + "/{response_id}", retrieve, methods=["GET"])
router.add_route(PATH + "/{response_id}", delete, methods=["DELETE"])
router.add_route(PATH + "/{response_id}/cancel", cancel, methods=["POST"])
router.add_route(PATH + "/{response_id}/input_items", input_items, methods=["GET"])
