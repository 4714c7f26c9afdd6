"""What the request path needs of the ``rollouts:`` section, built once per gateway.

:class:`RolloutPath` bundles the variant choice (read by the planners), the
controller's observer (told how each variant's request ended) and the shadow copier
(whose copies go through the gateway's one :class:`Forwarder`, so they share its
load gate and failover but never the client's admission, cache or answer).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.config.priority import PRIORITY_MAX
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pool.engine_pool import EnginePool
from gateway.rollouts.choice import VariantChooser
from gateway.rollouts.contracts import RolloutWeights, VariantObserver
from gateway.rollouts.shadow import ShadowCopier, ShadowSend
from gateway.routing.policies import RoutingTable

SHADOW_LABEL = "shadow"
SHADOW_QUEUE_KEY = "(shadow)"
"""Whose turn a copy waits for at the load gate (no key name has parentheses)."""


@dataclass(frozen=True, slots=True)
class RolloutPath:
    chooser: VariantChooser
    observer: VariantObserver
    shadows: ShadowCopier


def build_rollout_path(
    settings: Settings,
    pool: EnginePool,
    forwarder: Forwarder,
    routing: RoutingTable,
    metrics: GatewayMetrics,
    weights: RolloutWeights,
    observer: VariantObserver,
) -> RolloutPath | None:
    """The rollouts of ``settings`` on the request path; None when there are none."""
    if not settings.rollouts:
        return None
    served = {m.name: m.served_name for m in settings.models}
    send = shadow_sender(pool, forwarder, routing, metrics)
    return RolloutPath(
        VariantChooser(settings.rollouts, weights),
        observer,
        ShadowCopier(settings.rollouts, served, send, metrics),
    )


def shadow_sender(
    pool: EnginePool, forwarder: Forwarder, routing: RoutingTable, metrics: GatewayMetrics
) -> ShadowSend:
    """Sends one shadow copy through ``forwarder``: routed by the shadow model's policy,
    holding an engine slot while it waits, and never recorded as a client's request
    (its :class:`Exchange` only holds the engine slot and is not closed into metrics).

    At a saturated model's load gate a copy waits at the last priority there is, so
    every client's request, of any tier, goes first, and a client that finds the
    queue full takes a waiting copy's place (the copy is shed, never the client)."""

    async def send(model: str, path: str, payload: bytes, request_id: str) -> bytes:
        exchange = Exchange(SHADOW_LABEL, pool, metrics)
        policy, _ = routing.for_model(model)
        attempt = Attempt(model, path, payload, request_id, policy, None)
        attempt = replace(attempt, key=SHADOW_QUEUE_KEY, priority=PRIORITY_MAX)
        try:
            _, reply = await forwarder.complete(exchange, attempt)
        finally:
            exchange.drop_engine()
        return reply.body

    return send
