"""Composition root: ``create_app(settings)`` wires every piece; the lifespan owns them.

Nothing is built at import time. Shared objects (the pooled upstream client, the
metrics registry, the engine pool and its health monitor) are created when the
app starts and closed when it stops, so several apps can live in one process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.api import models, openai, ops
from gateway.engine_pool import EnginePool
from gateway.errors import GatewayError, MethodNotAllowedError, NotFoundError, error_body
from gateway.health import HealthMonitor
from gateway.metrics import GatewayMetrics
from gateway.request_id import RequestIdMiddleware
from gateway.routing import build_policy
from gateway.service import CompletionService
from gateway.settings import Settings
from gateway.state import AppState
from gateway.upstream import UpstreamClient

log = logging.getLogger("vgate.app")


def create_app(settings: Settings) -> FastAPI:
    """A gateway app for ``settings``; its shared objects exist while it runs."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = UpstreamClient(settings.upstream)
        await upstream.start()
        pool = EnginePool({m.name: m.endpoints for m in settings.models})
        metrics = GatewayMetrics()
        service = CompletionService(
            models={m.name: m for m in settings.models},
            pool=pool,
            policy=build_policy(settings.routing.policy),
            upstream=upstream,
            metrics=metrics,
            retries=settings.upstream.retries,
        )
        monitor = HealthMonitor(pool, upstream, settings.upstream.health_interval_s)
        await monitor.probe_all()
        monitor.start()
        app.state.vgate = AppState(settings=settings, pool=pool, metrics=metrics, service=service)
        try:
            yield
        finally:
            await monitor.stop()
            await upstream.close()

    app = FastAPI(
        title="vgate",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(openai.router)
    app.include_router(models.router)
    app.include_router(ops.router)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(RequestIdMiddleware)
    return app


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return Response(exc.body(), exc.status, headers=exc.headers, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    error: GatewayError
    if exc.status_code == 405:
        error = MethodNotAllowedError(f"method {request.method} not allowed on {request.url.path}")
    else:
        error = NotFoundError(f"no route {request.method} {request.url.path}")
    return await _gateway_error(request, error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = error_body("internal gateway error", "internal_error", None, "internal_error")
    return Response(body, 500, media_type="application/json")


def app_from_environment() -> FastAPI:
    """Factory for multi-worker serving: each worker loads the same config and environment."""
    from gateway.settings import load_settings

    return create_app(load_settings())
