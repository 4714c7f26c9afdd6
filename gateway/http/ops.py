"""Operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.context import app_state
from gateway.observability.metrics import METRICS_CONTENT_TYPE

router = APIRouter()

_OK = orjson.dumps({"status": "ok"})


async def health(request: Request) -> Response:
    """Liveness: the process serves HTTP."""
    return Response(_OK, media_type="application/json")


async def ready(request: Request) -> Response:
    """Readiness: at least one engine is healthy. 503 otherwise, with per-engine detail.

    The detail also shows each background task (``background``: name →
    ``last_success_age_s``, null before its first success, and consecutive
    ``failures``). They are reported, never judged: a slow or failing task does
    not take a gateway that can still serve out of rotation."""
    state = app_state(request)
    engines = state.pool.health()
    is_ready = any(any(urls.values()) for urls in engines.values())
    background = {
        name: {"last_success_age_s": health.last_success_age_s, "failures": health.failures}
        for name, health in state.background.snapshot().items()
    }
    body = {
        "status": "ready" if is_ready else "unavailable",
        "engines": engines,
        "background": background,
    }
    return Response(orjson.dumps(body), 200 if is_ready else 503, media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(app_state(request).metrics.render(), media_type=METRICS_CONTENT_TYPE)


async def engine_targets(request: Request) -> Response:
    """Every engine, in Prometheus's HTTP service-discovery format: point an
    ``http_sd_configs`` job here and vLLM's own metrics are scraped wherever engines run."""
    groups = [
        {"targets": [urlsplit(state.url).netloc], "labels": {"model": ",".join(state.models)}}
        for state in app_state(request).pool.states()
    ]
    return Response(orjson.dumps(groups), media_type="application/json")


router.add_route("/health", health, methods=["GET"])
router.add_route("/ready", ready, methods=["GET"])
router.add_route("/metrics", metrics, methods=["GET"])
router.add_route("/sd/engines", engine_targets, methods=["GET"])
