"""The upstream client the settings choose (``upstream.client``): the composition root
builds it here, so it names neither implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config.upstream import UpstreamSettings
from gateway.upstream.lean import LeanUpstream

if TYPE_CHECKING:
    from gateway.upstream.client import UpstreamClient


def build_upstream(settings: UpstreamSettings) -> LeanUpstream | UpstreamClient:
    """``lean``: pooled asyncio connections and httptools, probes included;
    ``aiohttp``: everything on one aiohttp session, imported only then (a gateway on
    the lean client never loads aiohttp). Call ``start()`` before use and ``close()``
    at shutdown."""
    if settings.client == "lean":
        return LeanUpstream(settings)
    from gateway.upstream.client import UpstreamClient

    return UpstreamClient(settings)
