"""What the live status page (``/status``) shows, built at most once a second.

One :class:`StatusFeed` per app: it serves the page (one HTML file with uPlot
inlined, from ``gateway/http/static/``) and the snapshots its event stream sends.
A snapshot is built from what the gateway already holds in memory: the pool's
engines (health, breaker, requests in flight, and the queue, KV-cache use and
prefix-cache hits last scraped from vLLM's ``/metrics``), the recent per-model
figures of :class:`~gateway.observability.live.LiveStats`, the tokens charged per
key name, and the rollouts' weights. It is built once for every open page (reused
for :data:`FRAME_REUSE_S`) and never blocks on I/O.

Engines are named by their id and display URL (no credentials); keys by their name
(never the secret), and a revoked key leaves the page when it leaves ``/metrics``.
Figures are this worker process's, like ``/metrics``.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import os
import re
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import orjson

from gateway.config.settings import Settings
from gateway.observability.live import QUANTILE_SLOT_S, LiveStats, ModelFigures
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tallies import LabelledCounter
from gateway.pool.display import engine_id
from gateway.pool.engine_pool import EnginePool
from gateway.rollouts.contracts import ConfigWeights, RolloutWeights

FRAME_REUSE_S = 0.25
"""A snapshot younger than this is sent again rather than rebuilt."""
MAX_STREAMS = 8
"""Status event streams open at once per worker; beyond it a new one gets a 503."""
TOP_KEYS = 10
SERIES_S = 120
"""The charts' span (seconds)."""

_STATIC = "static"
_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


class StatusPage:
    """The page's bytes and the Content-Security-Policy that lets exactly its own
    inline scripts run (by their hashes): nothing is loaded from anywhere else."""

    def __init__(self) -> None:
        static = resources.files("gateway.http").joinpath(_STATIC)
        html = static.joinpath("status.html").read_bytes()
        css = static.joinpath("uPlot.min.css").read_bytes()
        js = static.joinpath("uPlot.iife.min.js").read_bytes()
        html = html.replace(b"<!-- uPlot.min.css -->", b"<style>" + css + b"</style>", 1)
        html = html.replace(b"<!-- uPlot.iife.min.js -->", b"<script>" + js + b"</script>", 1)
        self.body = html
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
            for script in _SCRIPT.findall(html)
        )
        self.csp = (
            "default-src 'none'; "
            f"script-src {hashes}; "
            "style-src 'unsafe-inline'; "
            "connect-src 'self'; "
            "img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )


class StatusFeed:
    """Snapshots for the status page, and the count of its open event streams.

    ``weights`` answers the rollout controller's live weights (None when no
    controller runs: the configured weights are shown)."""

    def __init__(
        self,
        settings: Settings,
        pool: EnginePool,
        metrics: GatewayMetrics,
        weights: Callable[[], RolloutWeights | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._live: LiveStats = metrics.live
        self._tokens: LabelledCounter = metrics.tokens_charged
        self._forget_revoked_keys = metrics.forget_revoked_keys
        self._weights = weights
        self._configured = ConfigWeights(settings.rollouts)
        self._clock = clock
        self._wall = wall
        self._started = wall()
        self._max_streams = max_streams
        self._streams = 0
        self._frame = b""
        self._frame_at = float("-inf")
        self._page: StatusPage | None = None
        self._variant_of = {v.model: r.model for r in settings.rollouts for v in r.variants} | {
            r.shadow.model: r.model for r in settings.rollouts if r.shadow is not None
        }

    @property
    def page(self) -> StatusPage:
        """The page, read from the package when first asked for."""
        if self._page is None:
            self._page = StatusPage()
        return self._page

    # -- event streams -------------------------------------------------------------

    def open_stream(self) -> bool:
        """Count a new event stream in; False when :data:`MAX_STREAMS` are open."""
        if self._streams >= self._max_streams:
            return False
        self._streams += 1
        return True

    def close_stream(self) -> None:
        self._streams = max(0, self._streams - 1)

    @property
    def open_streams(self) -> int:
        return self._streams

    def frame(self) -> bytes:
        """The latest snapshot as one server-sent event (rebuilt when older than
        :data:`FRAME_REUSE_S`)."""
        now = self._clock()
        if now - self._frame_at >= FRAME_REUSE_S:
            self._frame = b"data: " + orjson.dumps(self.snapshot()) + b"\n\n"
            self._frame_at = now
        return self._frame

    # -- the snapshot --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = self._wall()
        return {
            "time": now,
            "worker": os.getpid(),
            "uptime_s": round(now - self._started, 1),
            "series": {"end": int(now), "step_s": 1, "ttft_step_s": QUANTILE_SLOT_S},
            "engines": self._engines(),
            "models": [_model(f) for f in self._live.summary(SERIES_S)],
            "keys": self._top_keys(),
            "rollouts": self._rollouts(),
        }

    def _engines(self) -> list[dict[str, Any]]:
        engines = []
        for state in self._pool.states():
            stats = state.stats
            queries = stats.prefix_cache_queries
            if state.breaker_open:
                health = "breaker open"
            else:
                health = "healthy" if state.healthy else "unhealthy"
            engines.append(
                {
                    "id": engine_id(state.url),
                    "url": state.url,  # the display URL: never with credentials
                    "models": [
                        {"model": m, "rollout": self._variant_of.get(m)} for m in state.models
                    ],
                    "state": health,
                    "in_flight": state.in_flight,
                    "running": stats.running,
                    "waiting": stats.waiting,
                    "kv_cache_usage": stats.kv_cache_usage,
                    "prefix_cache_hit_ratio": stats.prefix_cache_hits / queries
                    if queries
                    else None,
                    "restarts": state.restarts,
                    "sent": state.sent,
                }
            )
        return engines

    def _top_keys(self) -> list[dict[str, Any]]:
        self._forget_revoked_keys()  # a revoked key leaves the page as it leaves /metrics
        totals = {key: tokens for (key,), tokens in self._tokens.totals().items()}
        top = heapq.nlargest(TOP_KEYS, totals.items(), key=lambda item: item[1])
        return [{"name": name, "tokens": int(tokens)} for name, tokens in top]

    def _rollouts(self) -> list[dict[str, Any]]:
        rollouts = self._settings.rollouts
        if not rollouts:
            return []
        source = self._weights()
        live: RolloutWeights = source if source is not None else self._configured
        shown = []
        for rollout in rollouts:
            weights: Mapping[str, float] = live.weights(rollout.model)
            shown.append(
                {
                    "model": rollout.model,
                    "variants": [
                        {
                            "model": v.model,
                            "weight": weights.get(v.model, 0.0),
                            "configured_weight": v.weight,
                            "canary": v.canary,
                        }
                        for v in rollout.variants
                    ],
                    "shadow": None
                    if rollout.shadow is None
                    else {"model": rollout.shadow.model, "share": rollout.shadow.share},
                    "live": source is not None,
                }
            )
        return shown


def _model(figures: ModelFigures) -> dict[str, Any]:
    return {
        "model": figures.model,
        "requests": figures.requests,
        "requests_per_s": round(figures.requests_per_s, 3),
        "error_rate": figures.error_rate,
        "ttft_p50_s": figures.ttft_p50_s,
        "ttft_p95_s": figures.ttft_p95_s,
        "itl_p50_s": figures.itl_p50_s,
        "itl_p95_s": figures.itl_p95_s,
        "cache_hit_ratio": figures.cache_hit_ratio,
        "rate_series": figures.rate_series,
        "ttft_p95_series": figures.ttft_p95_series,
    }
