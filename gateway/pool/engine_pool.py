"""The live set of engines behind each model: health and requests in flight.

This is the one mutable view of the pool. Routing reads immutable snapshots of
it (:meth:`EnginePool.snapshot`); the health monitor and, with a managed engine
pool, the registry watcher update it. Everything runs on one event loop, so no
locks are needed.

Engines are keyed by the URL the gateway connects to, which may carry
credentials; what leaves the pool for display (:meth:`EnginePool.states`,
:meth:`EnginePool.health`, :meth:`EnginePool.engine_id`) names them without
(:mod:`gateway.pool.display`).

Each engine has a circuit breaker fed by passive signals (connection errors, 5xx,
timeouts reported by the service): after ``failures`` consecutive failures it
opens and the engine gets no traffic for ``cooldown_s``; then one request may try
it (half-open): a success closes the breaker, a failure opens it again. Only one
trial is in flight at a time: the request that takes the engine's slot
(:meth:`EnginePool.acquire`) once the cool-down is over holds the trial, and
until its verdict (:meth:`EnginePool.record_success` or
:meth:`EnginePool.record_failure`) the engine stays out of every snapshot. A
trial that ends without one (the client left, a 4xx of a stream) frees the slot
when it leaves the engine (:meth:`EnginePool.release`), so the next request
tries instead. Requests still in flight from before the breaker opened are told
apart from the trial by their task; their verdicts count all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from engines.stats import EngineStats
from gateway.observability.metrics import EngineState
from gateway.pool.credentials import EngineCredentials
from gateway.pool.display import display_url, engine_id
from gateway.routing.policies import EndpointView


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    cooldown_s: float = 10.0


NO_STATS = EngineStats(0.0, 0.0, 0.0)


@dataclass(slots=True)
class _Endpoint:
    url: str  # what the gateway connects to; may carry credentials, never shown
    shown: str  # display_url(url): what metrics and /ready show
    id: str  # engine_id(url): what the x-vgate-engine debug header shows
    in_flight: int = 0
    healthy: bool = True
    failures: int = 0
    open_until: float = 0.0
    """While the breaker is open, when it half-opens; 0.0 while it is closed."""
    trial: bool = False
    """Half-open: a trial request holds the engine and its verdict is awaited."""
    trial_task: object = None
    """The task of the trial request (its slot is freed when that task releases)."""
    trial_until: float = 0.0
    """Until when the trial keeps the others away: a trial that takes longer than a
    cool-down (a long answer from a slow but healthy engine) lets the next request
    try too, rather than leave the engine out for the whole of it."""
    stats: EngineStats = NO_STATS
    sent: int = 0  # requests sent to it, ever (retries included)
    restarts: int = 0  # as its supervisor reports it (managed engines)


class EnginePool:
    """Engines per model name; an engine URL belongs to one or more models."""

    def __init__(
        self,
        endpoints_by_model: Mapping[str, Sequence[str]],
        breaker: BreakerPolicy = BreakerPolicy(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breaker = breaker
        self._clock = clock
        self._on_release: Callable[[], None] | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._by_model: dict[str, tuple[str, ...]] = {}
        self.credentials = EngineCredentials()
        """The key each engine demands (kept by the registry watcher)."""
        self._failed: frozenset[str] = frozenset()
        for model, urls in endpoints_by_model.items():
            self.set_endpoints(model, urls)

    def models(self) -> tuple[str, ...]:
        return tuple(self._by_model)

    def has_model(self, model: str) -> bool:
        return model in self._by_model

    def urls(self) -> tuple[str, ...]:
        return tuple(self._endpoints)

    def set_endpoints(self, model: str, urls: Iterable[str]) -> None:
        """Replace a model's engines, keeping the state of those that stay."""
        urls = tuple(dict.fromkeys(urls))
        for url in urls:
            if url not in self._endpoints:
                self._endpoints[url] = _Endpoint(url, display_url(url), engine_id(url))
        self._by_model[model] = urls
        self._forget_orphans()

    def remove_model(self, model: str) -> None:
        self._by_model.pop(model, None)
        self._forget_orphans()

    def set_failed(self, models: Iterable[str]) -> None:
        """The models every engine of which has failed for good (kept by the registry
        watcher): no engine in the pool, and none that will come back."""
        self._failed = frozenset(models)

    def failed_for_good(self, model: str) -> bool:
        return model in self._failed

    def failed_models(self) -> frozenset[str]:
        """The models that have failed for good, of those in the pool."""
        return frozenset(model for model in self._failed if model in self._by_model)

    def snapshot(self, model: str, exclude: Iterable[str] = ()) -> tuple[EndpointView, ...]:
        """The model's candidate engines: the healthy ones, or all if none is healthy.

        Falling back to unhealthy engines lets a request find an engine that came
        back between two health probes instead of failing outright. Engines whose
        breaker is open are never candidates, nor a half-open one whose trial request
        is still in flight.
        """
        excluded = set(exclude) if exclude else ()
        views: list[EndpointView] = []
        healthy: list[EndpointView] = []
        endpoints = self._endpoints
        for url in self._by_model.get(model, ()):  # a loop: it runs for every request
            e = endpoints[url]
            # (a closed breaker's open_until is 0.0: the clock is read only for others)
            if url in excluded or (
                e.open_until and (e.trial_until if e.trial else e.open_until) > self._clock()
            ):
                continue
            view = EndpointView(
                url, e.in_flight, e.healthy, e.stats.waiting, e.stats.kv_cache_usage
            )
            views.append(view)
            if e.healthy:
                healthy.append(view)
        return tuple(healthy or views)

    def retry_in(self, model: str) -> float:
        """Seconds until one of ``model``'s engines may be tried again, for a client
        refused for want of one: the soonest that an open breaker half-opens (or a
        half-open one's trial stops keeping others away); 1 when none is open (an
        engine that is down is tried again at the next request)."""
        now = self._clock()
        waits = [
            (e.trial_until if e.trial else e.open_until) - now
            for e in (self._endpoints[url] for url in self._by_model.get(model, ()))
            if e.open_until
        ]
        soonest = min(waits, default=0.0)
        return soonest if soonest > 1.0 else 1.0

    def engine_id(self, url: str) -> str:
        """The short id of the engine at ``url`` (computed once, when it joined)."""
        endpoint = self._endpoints.get(url)
        return endpoint.id if endpoint is not None else engine_id(url)

    def set_restarts(self, url: str, restarts: int) -> None:
        endpoint = self._endpoints.get(url)
        if endpoint is not None:
            endpoint.restarts = restarts

    def set_stats(self, url: str, stats: EngineStats) -> None:
        """The engine's own load (queue, KV cache, prefix cache), as last scraped."""
        endpoint = self._endpoints.get(url)
        if endpoint is not None:
            endpoint.stats = stats

    def record_success(self, url: str) -> None:
        """The engine answered: its failure count restarts and its breaker closes."""
        endpoint = self._endpoints.get(url)
        if endpoint is not None:
            endpoint.failures = 0
            if endpoint.open_until:
                endpoint.open_until = 0.0
                endpoint.trial = False
                endpoint.trial_task = None

    def record_failure(self, url: str) -> None:
        """A passive failure signal; opens the breaker at the threshold (or re-opens it:
        a half-open engine's count is still at the threshold, so one failure does)."""
        endpoint = self._endpoints.get(url)
        if endpoint is None:
            return
        endpoint.failures += 1
        if endpoint.failures >= self._breaker.failures:
            endpoint.open_until = self._clock() + self._breaker.cooldown_s
            endpoint.trial = False
            endpoint.trial_task = None

    def breaker_open(self, url: str) -> bool:
        endpoint = self._endpoints.get(url)
        return endpoint is not None and endpoint.open_until > self._clock()

    def acquire(self, url: str) -> None:
        """A request takes a slot on the engine; on a half-open engine it is the trial."""
        endpoint = self._endpoints.get(url)
        if endpoint is not None:
            endpoint.in_flight += 1
            endpoint.sent += 1
            if endpoint.open_until and not endpoint.trial:  # (0.0: the breaker is closed)
                self._begin_trial(endpoint)

    def release(self, url: str) -> None:
        """A request leaves the engine; a trial leaving without a verdict frees the trial."""
        endpoint = self._endpoints.get(url)
        if endpoint is not None:
            if endpoint.in_flight > 0:
                endpoint.in_flight -= 1
            if endpoint.trial:
                self._end_trial(endpoint)
        if self._on_release is not None:
            self._on_release()

    def _begin_trial(self, endpoint: _Endpoint) -> None:
        now = self._clock()
        if endpoint.open_until <= now:  # half-open (an open one is never chosen)
            endpoint.trial = True
            endpoint.trial_task = _current_task()
            endpoint.trial_until = now + self._breaker.cooldown_s

    @staticmethod
    def _end_trial(endpoint: _Endpoint) -> None:
        """Free the trial when its request leaves the engine: without a verdict (the
        client left), so that the next request may try; a reply's verdict is recorded
        just after its slot is freed. A request from before the breaker opened (another
        task) leaving frees nothing, unless no request is left on the engine."""
        if endpoint.in_flight == 0 or _current_task() is endpoint.trial_task:
            endpoint.trial = False
            endpoint.trial_task = None

    def on_release(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a request leaves an engine (admission waits on it)."""
        self._on_release = callback

    def states(self) -> list[EngineState]:
        """Every engine's state, for metrics and service discovery; engines are named by
        their display URL (no credentials)."""
        now = self._clock()
        models: dict[str, list[str]] = {}
        for model, urls in self._by_model.items():
            for url in urls:
                models.setdefault(url, []).append(model)
        return [
            EngineState(e.shown, tuple(models.get(e.url, ())), e.in_flight, e.healthy,
                        e.open_until > now, e.sent, e.stats, e.restarts)
            for e in self._endpoints.values()
        ]  # fmt: skip

    def set_health(self, url: str, healthy: bool) -> None:
        endpoint = self._endpoints.get(url)
        if endpoint is not None:
            endpoint.healthy = healthy

    def health(self) -> dict[str, dict[str, bool]]:
        """Per model, per engine display URL: healthy or not (for /ready's detail)."""
        return {
            model: {self._endpoints[url].shown: self._endpoints[url].healthy for url in urls}
            for model, urls in self._by_model.items()
        }

    def any_healthy(self) -> bool:
        """Whether some model has a healthy engine (public readiness)."""
        return any(self._endpoints[url].healthy for urls in self._by_model.values() for url in urls)

    def _forget_orphans(self) -> None:
        used = {url for urls in self._by_model.values() for url in urls}
        for url in [u for u in self._endpoints if u not in used]:
            del self._endpoints[url]


def _current_task() -> object:
    """The running task, or None outside one (a synchronous caller)."""
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running event loop
        return None
