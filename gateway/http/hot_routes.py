"""The completion routes served straight from the ASGI scope, ahead of FastAPI's stack.

FastAPI wraps every route in about fifteen layers of middleware and routing
(error middleware, telemetry, body limits, exception handlers, an exit stack,
router and sub-router dispatch, ...). Each is a coroutine frame, and each time a
request waits (for Redis, for the engine) and resumes, Python walks back through
every one of them. The completion routes need none of it: they read their body
within the size limit themselves and turn every failure into an OpenAI error. So
:class:`HotRoutes` answers ``POST`` on those paths directly and hands every other
request, including other methods on the same paths, to FastAPI unchanged.

It sits inside :class:`gateway.http.request_id.RequestIdMiddleware` (answers still
carry ``x-request-id``) and does what the skipped layers would have done for
these routes: a :class:`GatewayError` becomes its JSON error and an unexpected
exception a logged 500, both in OpenAI's format.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayError
from gateway.http.render import gateway_error_response, internal_error_response

log = logging.getLogger("vgate.app")

Handler = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """``POST`` on the paths in ``routes`` goes to its handler; anything else to ``app``."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Handler]) -> None:
        self._app = app
        self._routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = gateway_error_response(exc)
        except Exception:
            log.exception("unhandled error on POST %s", scope["path"])
            response = internal_error_response()
        await response(scope, receive, send)
