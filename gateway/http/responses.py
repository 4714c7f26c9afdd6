"""The Responses API routes: thin, each hands its request to
:class:`gateway.pipeline.responses.ResponsesService` and renders what it answers.

Every route identifies the caller from the headers first (401 before any body is
read). ``create`` is an :class:`gateway.http.hot_routes.Endpoint`, as the completion
routes are: a client that hangs up while its response is being generated or
streamed cancels the request, which closes the upstream connection so the engine
stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import Receive, Scope

from gateway.errors import InvalidRequestError, NotFoundError
from gateway.http.client_watch import ClientWatch
from gateway.http.context import (
    app_state,
    completion_headers,
    read_body,
    scope_request_id,
    scope_state,
)
from gateway.http.hot_routes import Endpoint, add_endpoint
from gateway.http.render import render
from gateway.http.shutdown_cut import CUT_OFF, CutAtDeadline
from gateway.pipeline.response_events import error_event
from gateway.pipeline.responses import PATH, ResponsesService
from gateway.pipeline.results import Result

router = APIRouter()


def _service(request: Request) -> ResponsesService:
    service = app_state(request).responses
    if service is None:
        raise NotFoundError(f"no route {request.method} {request.url.path}")
    return service


async def _create(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
    state = scope_state(scope)
    service = state.responses
    if service is None:
        raise NotFoundError(f"no route {scope['method']} {scope['path']}")
    headers = completion_headers(scope["headers"])
    principal = await service.caller(headers.authorization)
    raw = await read_body(receive, state.settings.server.max_body_bytes, headers.content_length)
    watch.start()
    return await service.create(raw, principal, scope_request_id(scope), headers.session_id)


create = Endpoint(_create, cut_events=error_event(CUT_OFF))  # a Responses stream: no [DONE]


async def retrieve(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request.scope["headers"]).authorization)
    stream = request.query_params.get("stream", "false").strip().lower()
    if stream not in ("false", "0", ""):  # the SDK's retrieve(..., stream=True)
        raise InvalidRequestError(
            "Streaming a stored response again (stream=true) is not supported: "
            "retrieve it without stream.",
            param="stream",
            code="unsupported_parameter",
        )
    return render(await service.retrieve(request.path_params["response_id"], principal))


async def delete(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request.scope["headers"]).authorization)
    return render(await service.delete(request.path_params["response_id"], principal))


async def cancel(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request.scope["headers"]).authorization)
    return render(await service.cancel(request.path_params["response_id"], principal))


async def input_items(request: Request) -> Response:
    service = _service(request)
    principal = await service.caller(completion_headers(request.scope["headers"]).authorization)
    query = dict(request.query_params)
    response_id = request.path_params["response_id"]
    return render(await service.input_items(response_id, principal, query))


UNSUPPORTED = {
    "input_tokens": "counting a request's input tokens",
    "compact": "compacting a conversation",
}
"""OpenAI's ``POST /v1/responses/<name>`` operations this gateway does not offer."""


async def unsupported(request: Request) -> Response:
    """404 for an OpenAI Responses operation the gateway does not offer. Without it the
    path matched ``/v1/responses/{response_id}`` (GET, DELETE) and answered 405, which
    says the operation exists: the SDKs' ``NotFoundError`` is what a client can test for."""
    name = request.url.path.rsplit("/", 1)[-1]
    raise NotFoundError(
        f"POST {PATH}/{name} ({UNSUPPORTED[name]}) is not supported by this gateway."
    )


def _cut_at_deadline(handler: Callable[[Request], Awaitable[Response]]) -> Any:
    """``handler`` as an ASGI app whose answer, still running at the shutdown deadline,
    is the 503 ``shutting_down`` JSON (:class:`CutAtDeadline`), not uvicorn's plain 500
    (a read waiting on a slow store). Starlette serves an ASGI app as the endpoint as
    it is (its hints only admit request handlers)."""
    return cast(Any, CutAtDeadline(request_response(handler)))


add_endpoint(router, PATH, create)
router.add_route(PATH + "/input_tokens", _cut_at_deadline(unsupported), methods=["POST"])
router.add_route(PATH + "/compact", _cut_at_deadline(unsupported), methods=["POST"])
router.add_route(PATH + "/{response_id}", _cut_at_deadline(retrieve), methods=["GET"])
router.add_route(PATH + "/{response_id}", _cut_at_deadline(delete), methods=["DELETE"])
router.add_route(PATH + "/{response_id}/cancel", _cut_at_deadline(cancel), methods=["POST"])
router.add_route(
    PATH + "/{response_id}/input_items", _cut_at_deadline(input_items), methods=["GET"]
)
