"""Operational routes: liveness, readiness, Prometheus metrics and engine discovery.

These are the handlers; where each is served, and behind what, is decided by
:mod:`gateway.http.operator`. The public port only ever learns whether the
gateway is ready (:func:`ready_status`); engine names, background tasks and
metrics are operator detail (:func:`ready_detail`, :func:`metrics`,
:func:`engine_targets`). Engines are shown by their display URL, never with the
credentials their configured URL may carry.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.context import app_state
from gateway.observability.metrics import METRICS_CONTENT_TYPE
from gateway.pool.display import netloc

_OK = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})
_UNAVAILABLE = orjson.dumps({"status": "unavailable"})
_DRAINING = orjson.dumps({"status": "draining"})
JSON = "application/json"


async def health(request: Request) -> Response:
    """Liveness: the process serves HTTP."""
    return Response(_OK, media_type=JSON)


async def ready_status(request: Request) -> Response:
    """Readiness for load balancers and probes: ``{"status": "ready"}`` when the gateway
    itself can serve (:mod:`gateway.pool.readiness`: Redis reachable when configured, the
    rate limiter not failing closed, at least one engine known, not every model failed
    for good; engine health does not count), else 503
    ``{"status": "unavailable"}`` (``{"status": "draining"}`` once the graceful shutdown
    has begun); nothing more."""
    report = await app_state(request).readiness.check()
    if report.ready:
        return Response(_READY, media_type=JSON)
    return Response(_DRAINING if report.draining else _UNAVAILABLE, 503, media_type=JSON)


async def ready_detail(request: Request) -> Response:
    """Readiness with the detail an operator needs: the same status and code as
    :func:`ready_status`, what it was decided on (``redis``: reachable, unreachable or
    not configured; ``rate_limiter``: ok, or refusing while it fails closed on every
    request; ``known_engines``; ``failed_models``: those whose every engine has failed
    for good, judged only when that is every model), and per model each engine's
    health (by display URL), which is reported, not judged.

    The detail also shows each background task (``background``: name →
    ``last_success_age_s``, null before its first success, consecutive
    ``failures``, and ``problem``: why the last step failed, null once one
    succeeds). They are reported, never judged either: a slow or failing task
    does not take a gateway that can still serve out of rotation."""
    state = app_state(request)
    report = await state.readiness.check()
    background = {
        name: {
            "last_success_age_s": health.last_success_age_s,
            "failures": health.failures,
            "problem": health.problem,
        }
        for name, health in state.background.snapshot().items()
    }
    body = {
        "status": _status_name(report.ready, report.draining),
        "redis": report.redis,
        "known_engines": report.known_engines,
        "rate_limiter": report.rate_limiter,
        "engines": state.pool.health(),
        "failed_models": list(report.failed_models),
        "background": background,
    }
    return Response(orjson.dumps(body), 200 if report.ready else 503, media_type=JSON)


def _status_name(ready: bool, draining: bool) -> str:
    return "ready" if ready else "draining" if draining else "unavailable"


async def metrics(request: Request) -> Response:
    """The Prometheus exposition: with ``server.workers > 1``, every worker's figures,
    each labelled ``worker`` (:mod:`gateway.observability.worker_metrics`)."""
    state = app_state(request)
    shared = state.worker_metrics
    body = state.metrics.render() if shared is None else await shared.scrape()
    return Response(body, media_type=METRICS_CONTENT_TYPE)


async def engine_targets(request: Request) -> Response:
    """Every engine, in Prometheus's HTTP service-discovery format: point an
    ``http_sd_configs`` job here and vLLM's own metrics are scraped wherever engines run.

    Targets are ``host:port``; an engine that needs credentials needs them in the
    scrape job too (``basic_auth``), since they are never served here."""
    groups = [
        {"targets": [netloc(state.url)], "labels": {"model": ",".join(state.models)}}
        for state in app_state(request).pool.states()
    ]
    return Response(orjson.dumps(groups), media_type=JSON)
