"""Prometheus metrics on a registry owned by one app instance.

Label values are bounded: ``model`` is a configured model name (or ``"-"`` for
requests that never resolved one), ``endpoint`` one of the gateway's routes,
``kind`` one of connect, timeout (any deadline that passed, a stream's idle or total
deadline mid-stream included), status, interrupted (an answer broken off) or
stream_interrupted (a stream broken off by the engine) for upstream errors, or
requests, tokens, concurrency (rate limits), ``key`` a key's *name* (never the
secret; a revoked key's series are dropped, :meth:`GatewayMetrics.watch_keys`),
``task`` a background task's name (:mod:`gateway.background`), and the
``kind`` of a skipped shared-state record ``key`` or ``engine``, ``rollout`` a configured
rollout's name and ``variant`` one of its variant (or shadow) models, empty for a
request to a plain model. Nothing a client sends becomes a label.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from engines.stats import EngineStats
from gateway.background import TaskHealth
from gateway.observability.live import LiveStats
from gateway.observability.tallies import (
    Buckets,
    LabelledCounter,
    LabelledGauge,
    LabelledHistogram,
    Tally,
)

UNRESOLVED_MODEL = "-"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class GatewayMetrics:
    """All gateway metrics, registered on a fresh :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.live = LiveStats()
        """The last minutes per model (variant), for the status page."""
        # The figures every request records are lock-free tallies (tallies.py); the
        # children of the two every request ends with are kept together by label values.
        # The values are bounded: configured models (or "-"), two routes, HTTP statuses.
        self._request_children: dict[tuple[str, str, int, str], tuple[Tally, Buckets]] = {}
        self.requests = LabelledCounter(
            "vgate_requests_total",
            "Completed requests by model, route and HTTP status (``variant``: the rollout "
            "variant that served it, empty for a plain model).",
            ("model", "endpoint", "status", "variant"),
            registry=self.registry,
        )
        self.request_duration = LabelledHistogram(
            "vgate_request_duration_seconds",
            "Time from request received to the last byte of the response.",
            ("model", "endpoint", "variant"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = LabelledHistogram(
            "vgate_time_to_first_token_seconds",
            "Streams: time from request received to the first chunk sent to the client.",
            ("model", "endpoint", "variant"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = LabelledHistogram(
            "vgate_variant_inter_token_latency_seconds",
            "Rollout streams: mean time between the events of one stream, by variant.",
            ("model", "endpoint", "variant"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.variant_tokens = LabelledCounter(
            "vgate_variant_tokens_total",
            "Rollout requests: tokens (prompt + completion, as the engine's usage says) "
            "of the answers each variant gave; rate() is tokens per second.",
            ("model", "endpoint", "variant"),
            registry=self.registry,
        )
        self.in_flight = LabelledGauge(
            "vgate_requests_in_flight",
            "Requests being processed (a stream counts until its last chunk).",
            ("model",),
            registry=self.registry,
        )
        self.upstream_errors = LabelledCounter(
            "vgate_upstream_errors_total",
            "Failures talking to engines, by model and kind.",
            ("model", "kind"),
            registry=self.registry,
        )
        self.retries = Counter(
            "vgate_retries_total",
            "Requests sent to another engine after a failure that reached no client.",
            ("model",),
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "vgate_auth_failures_total",
            "Requests refused by auth: missing_key, invalid_key, model_not_allowed, "
            "invalid_admin_key (a route behind the admin key) or invalid_operator_token "
            "(the operator listener's read-only routes, server.operator_token set).",
            ("reason",),
            registry=self.registry,
        )
        self.client_disconnects = LabelledCounter(
            "vgate_client_disconnects_total",
            "Streams the client closed before the end.",
            ("model",),
            registry=self.registry,
        )
        self.slow_clients_cut = LabelledCounter(
            "vgate_slow_clients_cut_total",
            "Streams shared by single flight whose client fell more than "
            "cache.max_lag_bytes behind and was cut (client_too_slow), by model and "
            "role: leader (the request that called the engine) or follower.",
            ("model", "role"),
            registry=self.registry,
        )

        self.rate_limited = LabelledCounter(
            "vgate_rate_limited_requests_total",
            "Requests refused with 429, by key name and the limit hit "
            "(requests, tokens, concurrency).",
            ("key", "kind"),
            registry=self.registry,
        )
        self.tokens_charged = LabelledCounter(
            "vgate_tokens_charged",
            "Tokens charged to token-limited keys after reconciliation with usage.",
            ("key",),
            self.registry,
        )
        self._key_names: Callable[[], Collection[str]] | None = None
        """The key names the gateway knows now (:meth:`watch_keys`)."""
        self.redis_errors = Counter(
            "vgate_redis_errors_total",
            "Failed Redis operations, by component (ratelimit, cache, responses).",
            ("component",),
            registry=self.registry,
        )

        self.cache_requests = LabelledCounter(
            "vgate_cache_requests_total",
            "Cache outcomes by model: hit, miss, or bypass (not cacheable, no-store, store down).",
            ("model", "result"),
            registry=self.registry,
        )
        self.cache_stored_bytes = LabelledCounter(
            "vgate_cache_stored_bytes_total",
            "Bytes of answers written to the cache.",
            ("model",),
            registry=self.registry,
        )
        self.cache_joins = LabelledCounter(
            "vgate_cache_singleflight_joins_total",
            "Requests answered from an identical request already in flight (no engine call).",
            ("model",),
            registry=self.registry,
        )

        self.shed = Counter(
            "vgate_shed_requests_total",
            "Requests refused with 503 because every engine of the model was saturated.",
            ("model",),
            registry=self.registry,
        )
        self.admission_queue = Gauge(
            "vgate_admission_queue_depth",
            "Requests waiting in the gateway for a saturated model's engines.",
            ("model",),
            registry=self.registry,
        )
        self.retry_budget_exhausted = Counter(
            "vgate_retry_budget_exhausted_total",
            "Failovers not attempted because the retry budget was spent.",
            ("model",),
            registry=self.registry,
        )

        self.shadow_requests = Counter(
            "vgate_shadow_requests_total",
            "Shadow copies by rollout, shadow model and status (the engine's, or the "
            "gateway's error status); never seen by any client.",
            ("rollout", "variant", "status"),
            registry=self.registry,
        )
        self.shadow_duration = Histogram(
            "vgate_shadow_request_duration_seconds",
            "Time a shadow copy took, sent to answered.",
            ("rollout", "variant"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_shed = Counter(
            "vgate_shadow_shed_total",
            "Shadow copies not sent because the rollout's shadow.max_concurrent were in flight.",
            ("rollout",),
            registry=self.registry,
        )
        self.shadow_agreement = Counter(
            "vgate_shadow_agreement_total",
            "Deterministic requests whose shadow answer was the same text as the primary's, "
            "or differed.",
            ("rollout", "outcome"),
            registry=self.registry,
        )
        self.shadow_overlap = Histogram(
            "vgate_shadow_token_overlap",
            "Deterministic requests: F1 of the primary's and the shadow's whitespace tokens "
            "(1: the same words).",
            ("rollout",),
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=self.registry,
        )

    def watch_engines(self, states: Callable[[], Iterable[EngineState]]) -> None:
        """Export each engine's state, read from the pool when /metrics is scraped."""
        self.registry.register(_EngineCollector(states))

    def watch_background(self, tasks: Callable[[], Mapping[str, TaskHealth]]) -> None:
        """Export each background task's errors and last success age, read from ``tasks``
        (:meth:`gateway.background.BackgroundTasks.snapshot`) when /metrics is scraped."""
        self.registry.register(_BackgroundCollector(tasks))

    def watch_skipped_records(self, counts: Mapping[str, Callable[[], int]]) -> None:
        """Export ``vgate_records_skipped_total{kind}``: for each kind (``key``, ``engine``),
        the count of records its store skipped as undecodable, read at scrape time."""
        self.registry.register(_SkippedRecordsCollector(dict(counts)))

    def watch_keys(self, names: Callable[[], Collection[str]]) -> None:
        """Keep the series labelled by a key (``vgate_rate_limited_requests_total``,
        ``vgate_tokens_charged_total``) to the keys in ``names()``, the authenticator's
        copy of the key store: a revoked key's series are dropped at the next scrape
        (:meth:`forget_revoked_keys`), in every worker and replica, once its copy has
        caught up (within ``auth.refresh_interval_s``; ``vgate keys revoke`` and
        ``DELETE /admin/keys/...`` alike). Without it they stayed until a restart, one
        more series per key ever made."""
        self._key_names = names

    def forget_revoked_keys(self) -> None:
        """Drop the series of keys no longer known (nothing without :meth:`watch_keys`).
        Once per scrape or status frame, never per request."""
        if self._key_names is None:
            return
        known = self._key_names()
        self.rate_limited.forget("key", known)
        self.tokens_charged.forget("key", known)

    def observe_request(
        self, model: str, endpoint: str, status: int, seconds: float, variant: str = ""
    ) -> None:
        """Count one finished request and its duration (every request ends here)."""
        labels = (model, endpoint, status, variant)
        children = self._request_children.get(labels)
        if children is None:
            children = self._request_children[labels] = (
                self.requests.labels(model, endpoint, str(status), variant),
                self.request_duration.labels(model, endpoint, variant),
            )
        children[0].inc()
        children[1].observe(seconds)
        self.live.count(variant or model, status)

    def in_flight_of(self, model: str) -> Tally:
        """``vgate_requests_in_flight`` of ``model``."""
        return self.in_flight.labels(model)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (revoked keys' series dropped)."""
        self.forget_revoked_keys()
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class EngineState:
    """One engine as metrics see it."""

    url: str
    models: tuple[str, ...]
    in_flight: int
    healthy: bool
    breaker_open: bool
    sent: int
    stats: EngineStats
    restarts: int = 0


class _EngineCollector(Collector):
    """Per-engine figures straight from the pool: no work on the request path."""

    def __init__(self, states: Callable[[], Iterable[EngineState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "vgate_engine_requests", "Requests sent to each engine (retries included).",
            labels=("engine",),
        )  # fmt: skip
        gauges = {
            "in_flight": GaugeMetricFamily(
                "vgate_engine_in_flight", "This gateway's requests in flight per engine.",
                labels=("engine",),
            ),
            "healthy": GaugeMetricFamily(
                "vgate_engine_healthy", "1 when the engine's last health probe passed.",
                labels=("engine",),
            ),
            "breaker": GaugeMetricFamily(
                "vgate_engine_breaker_open", "1 while the engine's circuit breaker is open.",
                labels=("engine",),
            ),
            "waiting": GaugeMetricFamily(
                "vgate_engine_queue_depth", "Requests queued in the engine (last scrape).",
                labels=("engine",),
            ),
            "kv": GaugeMetricFamily(
                "vgate_engine_kv_cache_usage", "The engine's KV-cache use, 0 to 1 (last scrape).",
                labels=("engine",),
            ),
            "restarts": GaugeMetricFamily(
                "vgate_engine_restarts", "Restarts of a managed engine, as its supervisor reports.",
                labels=("engine",),
            ),
            "hits": GaugeMetricFamily(
                "vgate_engine_prefix_cache_hit_ratio",
                "Prefix-cache hits / queries since the engine started (last scrape).",
                labels=("engine",),
            ),
        }  # fmt: skip
        for state in self._states():
            url = [state.url]
            sent.add_metric(url, state.sent)
            gauges["in_flight"].add_metric(url, state.in_flight)
            gauges["healthy"].add_metric(url, float(state.healthy))
            gauges["breaker"].add_metric(url, float(state.breaker_open))
            gauges["waiting"].add_metric(url, state.stats.waiting)
            gauges["kv"].add_metric(url, state.stats.kv_cache_usage)
            gauges["restarts"].add_metric(url, state.restarts)
            queries = state.stats.prefix_cache_queries
            gauges["hits"].add_metric(
                url, state.stats.prefix_cache_hits / queries if queries else 0.0
            )
        yield sent
        yield from gauges.values()


class _BackgroundCollector(Collector):
    """Background tasks' health, read from their registry at scrape time: a sample for
    every task, 0 errors included, so a dashboard sees each task before it fails."""

    def __init__(self, tasks: Callable[[], Mapping[str, TaskHealth]]) -> None:
        self._tasks = tasks

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "vgate_background_errors", "Failed steps of each background task (each retried).",
            labels=("task",),
        )  # fmt: skip
        age = GaugeMetricFamily(
            "vgate_background_last_success_age_seconds",
            "Seconds since each background task last completed a step (absent: never).",
            labels=("task",),
        )
        for name, health in self._tasks().items():
            errors.add_metric([name], health.errors)
            if health.last_success_age_s is not None:
                age.add_metric([name], health.last_success_age_s)
        yield errors
        yield age


class _SkippedRecordsCollector(Collector):
    def __init__(self, counts: Mapping[str, Callable[[], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "vgate_records_skipped",
            "Shared-state records skipped because they cannot be decoded, by kind (key, "
            "engine); counted at every read that skips one, so it rises while one remains.",
            labels=("kind",),
        )
        for kind, count in self._counts.items():
            family.add_metric([kind], count())
        yield family
