"""OpenAI completion and embeddings routes: identify the caller, read the body within
the size limit, hand it to the service.

Each route is an :class:`gateway.http.hot_routes.Endpoint`: it works on the ASGI
scope and ``receive`` directly and returns the pipeline's result for the
endpoint to send. ``POST`` on their paths is served by
:class:`gateway.http.hot_routes.HotRoutes` ahead of FastAPI's middleware and
routing, which would be pure overhead on the hot path; the router entries here
answer every other method (405).

A client that hangs up while its answer is being made or streamed cancels the
request (:class:`gateway.http.client_watch.ClientWatch`), which closes the
upstream connection so the engine stops working for nobody.
"""

from __future__ import annotations

from time import perf_counter

from fastapi import APIRouter
from starlette.types import Receive, Scope

from gateway.auth.authenticator import OPERATOR
from gateway.http.client_watch import ClientWatch
from gateway.http.context import completion_headers, read_body, scope_request_id, scope_state
from gateway.http.hot_routes import Endpoint, add_endpoint
from gateway.pipeline.plan import CHAT, COMPLETIONS, EMBEDDINGS, Route
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Result

router = APIRouter()


def _handler(route: Route) -> Endpoint:
    async def answer(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
        received = perf_counter()  # Server-Timing's auth starts here
        state = scope_state(scope)
        headers = completion_headers(scope["headers"])
        explain = headers.explain
        operator = state.service.operator_explaining(explain, headers.authorization)
        if operator is not None:  # the admin key asking for routing evidence
            principal, explain = OPERATOR, operator
        else:  # refuse a wrong key (or one over its rate) before holding its body in memory
            principal = await state.service.caller(route, headers.authorization)
        authed = perf_counter()
        limit = state.settings.server.max_body_bytes
        raw = await read_body(receive, limit, headers.content_length)
        watch.start()
        meta = RequestMeta(
            scope_request_id(scope),
            headers.authorization,
            headers.session_id,
            headers.cache_control,
            principal,
            headers.priority,
            received,
            authed,
            explain,
            headers.traceparent,
        )
        return await state.service.handle(route, raw, meta)

    answer.__name__ = f"answer_{route.label}"
    return Endpoint(answer)


HOT_ROUTES = {route.path: _handler(route) for route in (CHAT, COMPLETIONS, EMBEDDINGS)}
"""Served by :class:`gateway.http.hot_routes.HotRoutes` ahead of FastAPI; the router entries
below still answer other methods on these paths (405)."""
for _path, _endpoint in HOT_ROUTES.items():
    add_endpoint(router, _path, _endpoint)
