"""Steps that keep :class:`EnginePool` current: health probes and load scraping.

Each is one step of a background task (``health-probe``, ``load-scrape``; see
:mod:`gateway.background`), which runs it periodically and survives its failures.
An engine that does not answer is not a failure of the step: the client reports
it as unhealthy (probe) or as no figures (scrape).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from engines.stats import EngineStats
from gateway.pool.engine_pool import EnginePool


class EngineProbe(Protocol):
    """What these steps need of the upstream client (a fake in tests)."""

    async def probe(self, url: str, headers: Mapping[str, str] | None = None) -> bool:
        """True when the engine at ``url`` answers its health check."""
        ...

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        """``GET url`` as text, or None when it does not answer 200 in time."""
        ...


class HealthMonitor:
    """Probes every engine's ``/health`` (:meth:`probe_all`), with its key.

    ``/health`` is what every engine serves, generating or pooling: an embeddings
    engine is never judged by a route it does not serve (the supervisor's stuck probe
    picks its route by the engine's task, :func:`engines.process.probe_request`)."""

    def __init__(self, pool: EnginePool, upstream: EngineProbe) -> None:
        self._pool = pool
        self._upstream = upstream

    async def probe_all(self) -> None:
        """Probe every engine once, concurrently, and record the results."""
        urls = self._pool.urls()
        keys = self._pool.credentials
        results = await asyncio.gather(*(self._upstream.probe(u, keys.headers(u)) for u in urls))
        for url, healthy in zip(urls, results, strict=True):
            self._pool.set_health(url, healthy)


class LoadScraper:
    """Reads every engine's ``/metrics`` (:meth:`scrape_all`): queue depth, KV-cache and
    prefix-cache figures.

    Engines are shared by every gateway replica; their own queue tells a policy
    about load this gateway did not send. An engine that does not answer keeps
    its last known figure (health probes deal with dead engines).
    """

    def __init__(self, pool: EnginePool, upstream: EngineProbe) -> None:
        self._pool = pool
        self._upstream = upstream

    async def scrape_all(self) -> None:
        urls = self._pool.urls()
        keys = self._pool.credentials
        texts = await asyncio.gather(
            *(self._upstream.fetch_text(f"{u}/metrics", keys.headers(u)) for u in urls)
        )
        for url, text in zip(urls, texts, strict=True):
            if text is not None:
                self._pool.set_stats(url, EngineStats.from_text(text))
