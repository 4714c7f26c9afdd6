"""The upstream client the settings choose (``upstream.client``): the composition root
builds it here, so it names neither implementation."""

from __future__ import annotations

from gateway.config.sections import UpstreamSettings
from gateway.upstream.client import UpstreamClient
from gateway.upstream.lean import LeanUpstream


def build_upstream(settings: UpstreamSettings) -> LeanUpstream | UpstreamClient:
    """``lean``: pooled asyncio connections and httptools (probes on aiohttp);
    ``aiohttp``: everything on one aiohttp session. Call ``start()`` before use and
    ``close()`` at shutdown."""
    if settings.client == "lean":
        return LeanUpstream(settings)
    return UpstreamClient(settings)
