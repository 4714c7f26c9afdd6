"""Periodic engine health probes that keep :class:`EnginePool` health current."""

from __future__ import annotations

import asyncio

from gateway.engine_pool import EnginePool
from gateway.periodic import Periodic
from gateway.upstream import UpstreamClient


class HealthMonitor(Periodic):
    """Probes every engine's ``/health`` each ``interval_s`` seconds."""

    def __init__(self, pool: EnginePool, upstream: UpstreamClient, interval_s: float) -> None:
        super().__init__("vgate-health-monitor", interval_s, self.probe_all)
        self._pool = pool
        self._upstream = upstream

    async def probe_all(self) -> None:
        """Probe every engine once, concurrently, and record the results."""
        urls = self._pool.urls()
        results = await asyncio.gather(*(self._upstream.probe(url) for url in urls))
        for url, healthy in zip(urls, results, strict=True):
            self._pool.set_health(url, healthy)
