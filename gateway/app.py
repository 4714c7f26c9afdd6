"""Composition root: ``create_app(settings)`` wires every piece; the lifespan owns them.

Nothing is built at import time. Shared objects (the pooled upstream client, the
metrics registry, the engine pool and its health monitor) are created when the
app starts and closed when it stops, so several apps can live in one process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace import SpanProcessor

from engines.supervisor import Deployment, EngineSupervisor
from gateway.auth.authenticator import build_authenticator
from gateway.auth.keys import KeyStore
from gateway.backends.memory.cache import MemoryEntryStore
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.backends.memory.responses import MemoryResponseStore
from gateway.backends.redis.cache import RedisEntryStore
from gateway.backends.redis.keys import RedisKeyStore
from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.responses import RedisResponseStore
from gateway.background import BackgroundTasks
from gateway.cache.response_cache import EntryStore
from gateway.collector import size_young_generation
from gateway.config.settings import Settings
from gateway.http.apps import operator_app, public_app
from gateway.http.connections import ConnectionLimits
from gateway.http.listener import OperatorListener
from gateway.http.state import AppState
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import build_telemetry
from gateway.observability.worker_metrics import WorkerMetrics, WorkerPlace
from gateway.pipeline.assembly import (
    build_completion_service,
    build_forwarder,
    build_passthrough_service,
    build_responses_service,
    routing_table,
)
from gateway.pipeline.rollout_path import build_rollout_path
from gateway.pool.engine_pool import BreakerPolicy, EnginePool
from gateway.pool.health import HealthMonitor, LoadScraper
from gateway.pool.model_info import EngineModels
from gateway.pool.readiness import Ping, Readiness
from gateway.pool.sources import RegistryWatcher, build_deployments, build_registry, engine_keys
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.limits import LimiterBackend
from gateway.rollouts.contracts import ConfigWeights, NoObserver
from gateway.rollouts.setup import start_rollout_controller
from gateway.shutdown import ShutdownSteps, exit_watchdog
from gateway.upstream.factory import build_upstream

log = logging.getLogger("vgate.app")

ENGINE_STOP_SLACK_S = 30.0
"""Added to managed engines' drain and stop timeouts for their close step: the
supervisor bounds each replica's drain-and-stop itself (with a smaller margin, 22 s)
and then its registry updates (5 s each); this outer deadline is the backstop."""


def create_app(
    settings: Settings,
    on_engines_ready: Callable[[], None] | None = None,
    span_processor: SpanProcessor | None = None,
    worker: WorkerPlace | None = None,
) -> FastAPI:
    """A gateway app for ``settings``; its shared objects exist while it runs.

    ``worker``: this app is one of ``server.workers`` processes (given by the worker
    supervisor); it serves its metrics to the others and ``/metrics`` shows them all
    (:mod:`gateway.observability.worker_metrics`).

    ``span_processor`` replaces the OTLP exporter of ``telemetry.traces`` (tests of an
    in-process gateway pass the SDK's in-memory exporter).

    ``on_engines_ready`` is called once every managed engine is ready (``vgate up``
    prints its banner then). With ``server.admin_port`` set, the lifespan also runs
    the operator listener (:mod:`gateway.http.listener`) over the same state.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn has drained requests (server.shutdown_timeout_s) before the exit runs;
        # every close step then has its own deadline (gateway/shutdown.py).
        stack = ShutdownSteps()
        try:
            state = await _start(settings, stack, on_engines_ready, span_processor, worker)
            app.state.vgate = state
            if state.worker_metrics is not None:
                await state.worker_metrics.start()
                stack.push_async_callback(state.worker_metrics.stop)
            server = settings.server
            if server.admin_port is not None:
                operator = operator_app()
                operator.state.vgate = app.state.vgate
                listener = OperatorListener(
                    operator,
                    server.admin_host,
                    server.admin_port,
                    server.log_level,
                    ConnectionLimits.from_settings(server),
                )
                await listener.start()
                stack.push_async_callback(listener.stop)
            # Everything built so far lives as long as the app: keep the cyclic GC from
            # re-scanning it on every full collection (long pauses under load otherwise).
            gc.freeze()
            yield
        finally:
            with exit_watchdog(stack.bound_s()):
                await stack.aclose()

    return public_app(settings.server, lifespan)


async def _start(
    settings: Settings,
    stack: ShutdownSteps,
    on_engines_ready: Callable[[], None] | None,
    span_processor: SpanProcessor | None = None,
    worker: WorkerPlace | None = None,
) -> AppState:
    """Build every shared object; ``stack`` closes them in reverse order, each close
    under a deadline (managed engines drain for as long as their own settings say)."""
    upstream = build_upstream(settings.upstream)
    await upstream.start()
    stack.push_async_callback(upstream.close)
    registry = build_registry(settings)
    stack.push_async_callback(registry.close)

    static = {m.name: m.endpoints for m in settings.models}
    breaker = BreakerPolicy(
        settings.upstream.breaker_failures, settings.upstream.breaker_cooldown_s
    )
    pool = EnginePool(static, breaker)
    aliases = {m.served_name: m.name for m in settings.models}
    tasks = BackgroundTasks()  # every periodic task: supervised, and reported by /ready
    watcher = RegistryWatcher(registry, pool, static, aliases, engine_keys(settings))
    watching = await tasks.start(
        "registry-watch", settings.engines.watch_interval_s, watcher.poll, run_first=True
    )
    stack.push_async_callback(watching.stop)

    supervisor: EngineSupervisor | None = None
    if any(m.engine is not None for m in settings.models):
        deployments = await asyncio.to_thread(build_deployments, settings)
        supervisor = EngineSupervisor(
            deployments, registry, progress=log.info, heartbeat_s=settings.engines.heartbeat_s
        )
        await supervisor.start()
        stack.push_async_callback(supervisor.stop, timeout_s=_engine_stop_bound_s(deployments))
        if on_engines_ready is not None:
            announce = asyncio.create_task(_announce(supervisor, on_engines_ready))
            stack.callback(announce.cancel)

    metrics = GatewayMetrics()
    metrics.watch_engines(pool.states)
    metrics.watch_background(tasks.snapshot)
    limiter, store, entries, ping, link = await _shared_state(settings, stack)
    salted = settings.cache.engine_prefix_scope == "per_key"  # keys' own prefix caches
    authenticator = build_authenticator(settings.auth, store, salted)
    if settings.auth.enabled:  # every series labelled by a key names a known one
        metrics.watch_keys(authenticator.names)
    metrics.watch_skipped_records(
        {
            "engine": lambda: registry.skipped_records,
            "key": lambda: store.skipped_records if store is not None else 0,
        }
    )
    refreshing = await tasks.start(
        "key-refresh", settings.auth.refresh_interval_s, authenticator.poll, run_first=True
    )
    stack.push_async_callback(refreshing.stop)
    admission = Admission(limiter, settings.ratelimit, metrics)
    renewing = await tasks.start(
        "lease-renewal", admission.renew_interval_s, admission.renew_leases
    )
    stack.push_async_callback(renewing.stop)
    forwarder = build_forwarder(settings, pool, upstream, metrics)
    # The controller (None without rollouts:) serves the shared weights and takes the
    # finished requests' reports; its task polls the state and judges canaries.
    control = await start_rollout_controller(settings, metrics, tasks, stack)
    rollouts = build_rollout_path(
        settings,
        pool,
        forwarder,
        routing_table(settings),
        metrics,
        control or ConfigWeights(settings.rollouts),
        control or NoObserver(),
    )
    if rollouts is not None:  # shadow copies in flight are cancelled at shutdown
        stack.push_async_callback(rollouts.shadows.close)
    telemetry = build_telemetry(settings, span_processor)  # traces flushed at exit
    stack.push_async_callback(telemetry.aclose, name="telemetry", timeout_s=5.0)
    service = build_completion_service(
        *(settings, pool, upstream, metrics, authenticator, admission, entries, forwarder),
        rollouts,
        telemetry,
    )
    passthrough_service = build_passthrough_service(
        settings, pool, forwarder, metrics, authenticator, admission
    )
    monitor = HealthMonitor(pool, upstream)
    probing = await tasks.start(
        "health-probe", settings.upstream.health_interval_s, monitor.probe_all, run_first=True
    )
    stack.push_async_callback(probing.stop)
    scraper = LoadScraper(pool, upstream)
    scraping = await tasks.start(
        "load-scrape", settings.upstream.metrics_interval_s, scraper.scrape_all
    )
    stack.push_async_callback(scraping.stop)
    # Engines' own model cards (max_model_len, root, parent), read when engines join and
    # every minute; the step itself is cheap when nothing is due.
    model_info = EngineModels(pool, upstream, {m.name: m.served_name for m in settings.models})
    learning = await tasks.start(
        "model-info", settings.upstream.health_interval_s, model_info.refresh, run_first=True
    )
    stack.push_async_callback(learning.stop)
    return AppState(
        settings=settings,
        pool=pool,
        metrics=metrics,
        service=service,
        keys=store,
        background=tasks,
        readiness=Readiness(
            pool,
            lambda: watcher.unrouted,
            ping,
            settings.redis.timeout_s,
            refusing=lambda: admission.refusing,
            write=None if link is None else link.accepts_writes,
        ),
        passthrough=passthrough_service,
        model_info=model_info,
        responses=build_responses_service(
            settings,
            pool,
            forwarder,
            metrics,
            authenticator,
            admission,
            _response_store(settings, stack, link),
            rollouts,
        ),
        rollout_control=control,
        skip_engine_drains=None if supervisor is None else supervisor.skip_drains,
        worker_metrics=None if worker is None else WorkerMetrics(worker, metrics.render),
    )


def _response_store(
    settings: Settings, stack: ShutdownSteps, link: RedisLink | None
) -> MemoryResponseStore | RedisResponseStore:
    """Stored responses (the Responses API): in ``redis.url`` when set (``link``, whose
    state says when Redis is down), shared by every replica, over a connection pool of
    their own; else in this process's memory, bounded."""
    redis = settings.redis
    if redis.url is None or link is None:
        return MemoryResponseStore(settings.responses.memory_max_bytes)
    store = RedisResponseStore.connect(redis.url, link, redis.timeout_s)
    stack.push_async_callback(store.close)
    return store


async def _shared_state(
    settings: Settings, stack: ShutdownSteps
) -> tuple[LimiterBackend, KeyStore | None, EntryStore, Ping | None, RedisLink | None]:
    """Rate-limit counters, run-time keys and cache entries: in Redis when configured,
    else in this process's memory. Cache entries go to ``cache.redis_url`` when it is
    set (a Redis that may evict them), else with the rest to ``redis.url``. Last, a
    ``PING`` of ``redis.url`` for readiness and the link to it (None without it)."""
    redis = settings.redis
    links: dict[str, RedisLink] = {}

    def link_to(url: str) -> RedisLink:
        """One link (one connection) per Redis URL, closed with the app."""
        if url not in links:
            links[url] = RedisLink(url, redis.timeout_s, redis.retry_s)
            stack.push_async_callback(links[url].close)
        return links[url]

    cache_url = settings.cache.redis_url or redis.url
    entries: EntryStore = (
        MemoryEntryStore(settings.cache.memory_max_bytes)
        if cache_url is None
        else RedisEntryStore(link_to(cache_url))
    )
    if redis.url is None:
        memory_keys = MemoryKeyStore() if settings.auth.admin_key is not None else None
        return MemoryLimiter(), memory_keys, entries, None, None
    link = link_to(redis.url)
    limiter = RedisLimiter(link)
    stack.push_async_callback(limiter.close)  # its release timer ends before the link
    return limiter, RedisKeyStore(link.client), entries, link.client.ping, link


def _engine_stop_bound_s(deployments: Sequence[Deployment]) -> float:
    """How long stopping managed engines may take: the longest drain and stop of a
    deployment (they stop in parallel), plus registry updates and reaping."""
    return ENGINE_STOP_SLACK_S + max(
        (d.spec.health.drain_timeout_s + d.spec.health.stop_timeout_s for d in deployments),
        default=0.0,
    )


async def _announce(supervisor: EngineSupervisor, on_ready: Callable[[], None]) -> None:
    if await supervisor.wait_ready():
        on_ready()
    else:
        log.error("an engine failed for good; see its log file")


def app_from_environment(worker: WorkerPlace | None = None) -> FastAPI:
    """Factory for multi-worker serving: each worker loads the same config and environment."""
    from gateway.config.settings import load_settings
    from gateway.observability.logs import configure_logging

    settings = load_settings()
    configure_logging(settings.server.log_level, settings.server.log_format)
    size_young_generation()
    return create_app(settings, worker=worker)
