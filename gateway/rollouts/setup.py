"""Builds the rollout controller of one app: its state store (Redis when ``redis.url`` is
set, shared by every replica; else this process's memory), its windows and metrics,
and its ``rollouts`` background task (the state polled and every canary judged every
0.25 s)."""

from __future__ import annotations

from gateway.backends.memory.rollouts import MemoryRolloutStore
from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.rollouts import RedisRolloutStore
from gateway.background import BackgroundTasks
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.rollouts.controller import STEP_S, RolloutController
from gateway.rollouts.rollout_metrics import RolloutMetrics
from gateway.rollouts.state import RolloutBook, RolloutStore
from gateway.rollouts.window import RolloutWindows
from gateway.shutdown import ShutdownSteps

TASK_NAME = "rollouts"


async def start_rollout_controller(
    settings: Settings, metrics: GatewayMetrics, tasks: BackgroundTasks, stack: ShutdownSteps
) -> RolloutController | None:
    """The running controller, or None without ``rollouts:``; ``stack`` stops it."""
    rollouts = settings.rollouts
    if not rollouts:
        return None
    store: RolloutStore
    redis = settings.redis
    if redis.url is None:
        store = MemoryRolloutStore()
    else:
        link = RedisLink(redis.url, redis.timeout_s, redis.retry_s)
        stack.push_async_callback(link.close)
        store = RedisRolloutStore(link.client, redis.timeout_s)
    windows = RolloutWindows(
        {r.model: r.slo.window_s for r in rollouts},
        {r.model: [v.model for v in r.variants] for r in rollouts},
    )
    control = RolloutController(rollouts, RolloutBook(rollouts, store), windows)
    control.metrics = RolloutMetrics(metrics.registry, control.weight_rows)
    task = await tasks.start(TASK_NAME, STEP_S, control.step, run_first=True)
    stack.push_async_callback(task.stop)
    return control
