"""Building the Responses API service from settings (the composition root calls it).

It gets a :class:`Forwarder` of its own, made exactly as the completion pipeline's
(same retries, deadlines per model, overload gate settings and engine credentials),
with its own retry budget: failovers of one API do not spend the other's.
"""

from __future__ import annotations

from gateway.auth.authenticator import Authenticator
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.forwarding import Forwarder, RetryBudget
from gateway.pipeline.responses import ResponsesService
from gateway.pool.engine_pool import EnginePool
from gateway.pool.shedding import LoadGate
from gateway.ratelimit.admission import Admission
from gateway.responses.store import ResponseStore
from gateway.routing.policies import RoutingTable
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.transport import Upstream


def build_responses_service(
    settings: Settings,
    pool: EnginePool,
    upstream: Upstream,
    metrics: GatewayMetrics,
    authenticator: Authenticator,
    admission: Admission,
    store: ResponseStore,
) -> ResponsesService:
    """The Responses API for ``settings``' models, keeping responses in ``store``."""
    routing = RoutingTable(
        settings.routing, {m.name: m.routing for m in settings.models if m.routing}
    )
    up = settings.upstream
    gate = LoadGate(
        pool,
        {m.name: m.overload for m in settings.models if m.overload is not None},
        settings.overload,
        metrics,
    )
    forwarder = Forwarder(
        pool,
        upstream,
        metrics,
        up.retries,
        {m.name: Deadlines.of(up, m.timeouts) for m in settings.models},
        Deadlines.of(up, None),
        gate,
        RetryBudget(up.retry_budget_ratio, up.retry_budget_burst),
    )
    return ResponsesService(
        {m.name: m for m in settings.models},
        pool,
        routing,
        forwarder,
        metrics,
        authenticator,
        admission,
        store,
        settings.responses,
    )
