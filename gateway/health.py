"""Periodic engine health probes that keep :class:`EnginePool` health current."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.engine_pool import EnginePool
from gateway.upstream import UpstreamClient

log = logging.getLogger("vgate.health")


class HealthMonitor:
    """Probes every engine's ``/health`` each ``interval_s`` seconds."""

    def __init__(self, pool: EnginePool, upstream: UpstreamClient, interval_s: float) -> None:
        self._pool = pool
        self._upstream = upstream
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def probe_all(self) -> None:
        """Probe every engine once, concurrently, and record the results."""
        urls = self._pool.urls()
        results = await asyncio.gather(*(self._upstream.probe(url) for url in urls))
        for url, healthy in zip(urls, results, strict=True):
            self._pool.set_health(url, healthy)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="vgate-health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.probe_all()
