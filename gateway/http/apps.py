"""The two FastAPI apps the gateway serves, and what they share: the public app (the
completion routes served ahead of FastAPI's stack, then every other client route)
and the operator listener's app, both with ``x-request-id`` outermost, FastAPI's own
telemetry off and errors in OpenAI's format.

Built by :func:`gateway.app.create_app`, which owns their lifespan and state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, Request
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.config.sections import ServerSettings
from gateway.errors import GatewayError, MethodNotAllowedError, NotFoundError
from gateway.http import completions, models, passthrough
from gateway.http import responses as responses_routes
from gateway.http.body_budget import BodyBudget
from gateway.http.hot_routes import HotRoutes
from gateway.http.operator import operator_router, public_router
from gateway.http.render import gateway_error_response, internal_error_response
from gateway.http.request_id import RequestIdMiddleware

log = logging.getLogger("vgate.app")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def public_app(server: ServerSettings, lifespan: Lifespan) -> FastAPI:
    """The app clients reach on ``server.port``."""
    app = GatewayApp(
        telemetry=no_fastapi_telemetry(),
        title="vgate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,  # RequestIdMiddleware drops trailing slashes instead
    )
    app.body_budget = BodyBudget(server.max_body_bytes_in_flight, server.max_body_bytes)
    app.include_router(completions.router)
    app.include_router(models.router)
    app.include_router(passthrough.router)
    app.include_router(responses_routes.router)
    app.include_router(public_router(server))
    _add_error_handlers(app)
    return app


def operator_app() -> FastAPI:
    """The operator listener's app: operational routes only, errors in the same format."""
    app = OperatorApp(
        telemetry=no_fastapi_telemetry(),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.include_router(operator_router())
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def no_fastapi_telemetry() -> TelemetryConfig:
    """FastAPI's own OpenTelemetry instrumentation, off: the gateway traces requests
    itself (``telemetry.traces``, GenAI spans). On, FastAPI asks the global
    OpenTelemetry providers on every request whether they are configured (once the SDK
    is installed: measured in paired rounds, see benchmarks/RESULTS.md) and, with
    tracing on, would add spans and metrics of its own to every request."""
    return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}


class GatewayApp(FastAPI):
    """FastAPI with :class:`RequestIdMiddleware` outside everything else, and the
    completion routes served by :class:`HotRoutes` ahead of FastAPI's own stack.

    Outermost, so that even the 500 that Starlette's ServerErrorMiddleware sends
    for an unexpected exception carries ``x-request-id``. It also meters large
    request bodies against :attr:`body_budget` (``server.max_body_bytes_in_flight``).
    """

    body_budget: BodyBudget | None = None

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(
            HotRoutes(super().build_middleware_stack(), completions.HOT_ROUTES),
            self.body_budget,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A completion ``POST`` goes straight to the stack built above: FastAPI's and
        Starlette's own ``__call__`` (root path, telemetry switches, the lazy build)
        have nothing to do for it, and are two more frames Python walks every time
        the request waits and resumes. Everything else, lifespan included, as usual."""
        stack = self.middleware_stack
        if (
            stack is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in completions.HOT_ROUTES
        ):
            scope["app"] = self  # what Starlette sets: routes find the app's state there
            await stack(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class OperatorApp(FastAPI):
    """FastAPI with :class:`RequestIdMiddleware` outside everything (as :class:`GatewayApp`)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestIdMiddleware(super().build_middleware_stack())


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return gateway_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: GatewayError
    if exc.status_code == 405:
        error = MethodNotAllowedError(
            f"method {request.method} not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),  # Allow: the methods the route takes (RFC 9110)
        )
    else:
        error = NotFoundError(f"no route {request.method} {request.url.path}")
    return await _gateway_error(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return internal_error_response()
