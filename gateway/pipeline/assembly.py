"""Building the completion pipeline from settings and the shared objects it uses.

The composition root (:mod:`gateway.app`) calls it with the real upstream client
and stores; unit tests call it with :class:`gateway.upstream.fake.FakeUpstream`
and in-memory stores, so both run the same pipeline.
"""

from __future__ import annotations

from gateway.auth.authenticator import Authenticator
from gateway.cache.response_cache import EntryStore, ResponseCache
from gateway.config.priority import tiers_reach_engines
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.telemetry import Telemetry
from gateway.pipeline.forwarding import Forwarder, RetryBudget
from gateway.pipeline.passthrough import PassthroughService
from gateway.pipeline.plan import BodyLimits, RequestPlanner
from gateway.pipeline.priority import PriorityTiers
from gateway.pipeline.responses import ResponsesService
from gateway.pipeline.rollout_path import RolloutPath
from gateway.pipeline.service import CompletionService
from gateway.pool.engine_pool import EnginePool
from gateway.pool.shedding import LoadGate
from gateway.ratelimit.admission import Admission
from gateway.responses.store import ResponseStore
from gateway.routing.policies import RoutingTable
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.transport import Upstream


def build_completion_service(
    settings: Settings,
    pool: EnginePool,
    upstream: Upstream,
    metrics: GatewayMetrics,
    authenticator: Authenticator,
    admission: Admission,
    entries: EntryStore,
    forwarder: Forwarder | None = None,
    rollouts: RolloutPath | None = None,
    telemetry: Telemetry | None = None,
) -> CompletionService:
    """The pipeline for ``settings``' models, over ``pool`` and ``upstream``
    (``forwarder``: one shared with other services, else one of its own; ``rollouts``:
    the rollouts' variant choice, observer and shadow copies, if any)."""
    models = {m.name: m for m in settings.models}
    routing = routing_table(settings)
    if forwarder is None:
        forwarder = build_forwarder(settings, pool, upstream, metrics)
    return CompletionService(
        planner=RequestPlanner(
            models,
            pool,
            routing,
            BodyLimits(settings.server.max_messages, settings.server.max_prompt_chars),
            rollouts.chooser if rollouts is not None else None,
        ),
        pool=pool,
        forwarder=forwarder,
        metrics=metrics,
        authenticator=authenticator,
        admission=admission,
        cache=ResponseCache(settings.cache, models, entries, metrics),
        debug_headers=settings.server.debug_headers,
        observer=rollouts.observer if rollouts is not None else None,
        shadows=rollouts.shadows if rollouts is not None else None,
        tiers=PriorityTiers(priority_tiers_on(settings)),
        telemetry=telemetry,
    )


def priority_tiers_on(settings: Settings) -> bool:
    """Whether requests carry their tier to vLLM and managed engines schedule by it."""
    keys = (k.priority for k in settings.auth.keys)
    return tiers_reach_engines(settings.routing.priority_tiers, keys)


def build_passthrough_service(
    settings: Settings,
    pool: EnginePool,
    forwarder: Forwarder,
    metrics: GatewayMetrics,
    authenticator: Authenticator,
    admission: Admission,
) -> PassthroughService:
    """vLLM's model-scoped routes, forwarded with the completions' ``forwarder`` (one
    load gate and retry budget per gateway)."""
    models = {m.name: m for m in settings.models}
    return PassthroughService(
        models, pool, forwarder, metrics, authenticator, admission, routing_table(settings)
    )


def routing_table(settings: Settings) -> RoutingTable:
    return RoutingTable(settings.routing, {m.name: m.routing for m in settings.models if m.routing})


def build_forwarder(
    settings: Settings, pool: EnginePool, upstream: Upstream, metrics: GatewayMetrics
) -> Forwarder:
    """The one :class:`Forwarder` of a gateway: engine choice, failover, timeouts."""
    upstream_settings = settings.upstream
    gate = LoadGate(
        pool,
        {m.name: m.overload for m in settings.models if m.overload is not None},
        settings.overload,
        metrics,
    )
    return Forwarder(
        pool,
        upstream,
        metrics,
        upstream_settings.retries,
        {m.name: Deadlines.of(upstream_settings, m.timeouts, m.name) for m in settings.models},
        Deadlines.of(upstream_settings, None),
        gate,
        RetryBudget(upstream_settings.retry_budget_ratio, upstream_settings.retry_budget_burst),
    )


def build_responses_service(
    settings: Settings,
    pool: EnginePool,
    forwarder: Forwarder,
    metrics: GatewayMetrics,
    authenticator: Authenticator,
    admission: Admission,
    store: ResponseStore,
    rollouts: RolloutPath | None = None,
) -> ResponsesService:
    """The Responses API for ``settings``' models, keeping responses in ``store``, forwarded
    with the completions' ``forwarder`` (one load gate and retry budget per gateway)."""
    return ResponsesService(
        {m.name: m for m in settings.models},
        pool,
        routing_table(settings),
        forwarder,
        metrics,
        authenticator,
        admission,
        store,
        settings.responses,
        rollouts.chooser if rollouts is not None else None,
        rollouts.observer if rollouts is not None else None,
        max_items=settings.server.max_messages,
        max_chars=settings.server.max_prompt_chars,
    )
