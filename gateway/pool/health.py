"""Background tasks that keep :class:`EnginePool` current: health probes and load scraping."""

from __future__ import annotations

import asyncio

from engines.stats import EngineStats
from gateway.background import Periodic
from gateway.pool.engine_pool import EnginePool
from gateway.upstream.client import UpstreamClient


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


class LoadScraper(Periodic):
    """Reads every engine's ``/metrics`` each ``interval_s``: queue depth, KV-cache and
    prefix-cache figures.

    Engines are shared by every gateway replica; their own queue tells a policy
    about load this gateway did not send. An engine that does not answer keeps
    its last known figure (health probes deal with dead engines).
    """

    def __init__(self, pool: EnginePool, upstream: UpstreamClient, interval_s: float) -> None:
        super().__init__("vgate-load-scraper", interval_s, self.scrape_all)
        self._pool = pool
        self._upstream = upstream

    async def scrape_all(self) -> None:
        urls = self._pool.urls()
        texts = await asyncio.gather(*(self._upstream.fetch_text(f"{u}/metrics") for u in urls))
        for url, text in zip(urls, texts, strict=True):
            if text is not None:
                self._pool.set_stats(url, EngineStats.from_text(text))
