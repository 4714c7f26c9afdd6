"""Admission control: when every engine of a model is saturated, wait briefly, then shed.

An engine is *saturated* when this gateway has ``max_in_flight`` requests on it,
or its own queue (``vllm:num_requests_waiting``, scraped) holds ``max_waiting``
(either limit may be off). A request for a model whose engines are all
saturated waits in the gateway, at most ``queue_timeout_s`` and behind at most
``queue_size`` others, for one of them to free up; otherwise it is answered 503
``overloaded`` with ``Retry-After``, rather than piled onto vLLM's queue where it
would only raise everyone's latency. Waiters are woken when a request leaves an
engine (and re-check every 200 ms for queues that drained elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.config.models import OverloadSettings
from gateway.errors import OverloadedError
from gateway.observability.metrics import GatewayMetrics
from gateway.pool.engine_pool import EnginePool
from gateway.routing.policies import EndpointView

_RECHECK_S = 0.2


class LoadGate:
    def __init__(
        self,
        pool: EnginePool,
        limits: Mapping[str, OverloadSettings],
        default: OverloadSettings,
        metrics: GatewayMetrics,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._default = default
        self._metrics = metrics
        self._queued: dict[str, int] = {}
        self._waiters = 0
        self._freed: asyncio.Event | None = None
        pool.on_release(self._wake)

    async def enter(self, model: str) -> None:
        """Return when an engine of ``model`` has room; raise OverloadedError otherwise."""
        limits = self._limits.get(model, self._default)
        if limits.max_in_flight is None and limits.max_waiting is None:
            return
        if not self._saturated(model, limits):
            return
        queued = self._queued.get(model, 0)
        if queued >= limits.queue_size:
            raise self._shed(model, limits, "its queue is full")
        self._queued[model] = queued + 1
        self._waiters += 1
        gauge = self._metrics.admission_queue.labels(model)
        gauge.inc()
        try:
            async with asyncio.timeout(limits.queue_timeout_s):
                while self._saturated(model, limits):
                    await self._wait()
        except TimeoutError:
            why = f"no engine freed up in {limits.queue_timeout_s:g} s"
            raise self._shed(model, limits, why) from None
        finally:
            self._queued[model] -= 1
            self._waiters -= 1
            gauge.dec()

    def _saturated(self, model: str, limits: OverloadSettings) -> bool:
        views = self._pool.snapshot(model)
        return bool(views) and all(_full(view, limits) for view in views)

    async def _wait(self) -> None:
        if self._freed is None:
            self._freed = asyncio.Event()
        try:
            async with asyncio.timeout(_RECHECK_S):
                await self._freed.wait()
        except TimeoutError:
            pass

    def _wake(self) -> None:
        if self._waiters and self._freed is not None:
            freed, self._freed = self._freed, asyncio.Event()
            freed.set()

    def _shed(self, model: str, limits: OverloadSettings, why: str) -> OverloadedError:
        self._metrics.shed.labels(model).inc()
        return OverloadedError(
            f"Every engine of `{model}` is saturated and {why}; retry shortly.",
            headers={"Retry-After": str(limits.retry_after_s)},
        )


def _full(view: EndpointView, limits: OverloadSettings) -> bool:
    if limits.max_in_flight is not None and view.in_flight >= limits.max_in_flight:
        return True
    return limits.max_waiting is not None and view.waiting >= limits.max_waiting
