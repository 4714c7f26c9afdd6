"""The last few minutes of traffic per model, in memory, for the live status page.

Prometheus keeps totals since start; the status page (``/status``) needs recent
figures (requests per second, error rate, TTFT and ITL percentiles, cache hit
ratio) without a Prometheus server. :class:`LiveStats` keeps them in time buckets:

* per second, for the last :data:`HORIZON_S` seconds: requests, errors, cache hits
  and lookups (a ring of slots, each stamped with its second, reset when reused);
* per :data:`QUANTILE_SLOT_S` seconds over the same horizon: a log-scale histogram
  of TTFT and of ITL, so percentiles are read with a bounded error (one bucket:
  :data:`BUCKET_GROWTH` - 1, about 19%) instead of keeping every sample.

Memory is fixed per model (a few tens of KB) and the models are bounded
(:data:`MAX_MODELS`; the label values metrics use, and beyond the cap one
``"(other)"`` row). Recording is O(1): a clock read, an index, a few list stores
(a bisect over :data:`BOUNDS` for a latency). Everything runs on the event loop's
thread, so there are no locks. Reading (:meth:`LiveStats.summary`) does the sums,
once a second while a status page is open.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

HORIZON_S = 300
"""How far back the figures go (seconds)."""
QUANTILE_SLOT_S = 10
"""The width of one latency histogram slot (seconds)."""
_QUANTILE_SLOTS = HORIZON_S // QUANTILE_SLOT_S
RATE_WINDOW_S = 10
"""Requests per second are counted over this many recent seconds."""
MAX_MODELS = 64
OTHER_MODELS = "(other)"
"""Where requests of models beyond :data:`MAX_MODELS` are counted."""

BUCKET_GROWTH = 1.19
_SMALLEST_S = 0.0005
BOUNDS: tuple[float, ...] = tuple(
    _SMALLEST_S * BUCKET_GROWTH**i
    for i in range(math.ceil(math.log(600 / _SMALLEST_S, BUCKET_GROWTH)) + 1)
)
"""Upper bounds of the latency buckets, 0.5 ms to 10 min; one more bucket holds the rest."""
_BUCKETS = len(BOUNDS) + 1


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """One model's recent traffic, as the status page shows it."""

    model: str
    requests: int
    """Requests that ended in the horizon."""
    requests_per_s: float
    """Over the last :data:`RATE_WINDOW_S` seconds."""
    error_rate: float | None
    """Share of requests answered 5xx or whose stream broke (None: no requests)."""
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    itl_p50_s: float | None
    itl_p95_s: float | None
    cache_hit_ratio: float | None
    """Hits / (hits + misses) of cache lookups (None: no lookup)."""
    rate_series: tuple[int, ...]
    """Requests per second, oldest first, the last one the second in progress."""
    ttft_p95_series: tuple[float | None, ...]
    """TTFT p95 per :data:`QUANTILE_SLOT_S` slot, oldest first."""


class _ModelWindow:
    """One model's ring of second slots and of histogram slots."""

    __slots__ = (
        "errors",
        "hist_stamps",
        "hits",
        "itl",
        "lookups",
        "requests",
        "stamps",
        "ttft",
    )

    def __init__(self) -> None:
        self.stamps = [-1] * HORIZON_S
        self.requests = [0] * HORIZON_S
        self.errors = [0] * HORIZON_S
        self.hits = [0] * HORIZON_S
        self.lookups = [0] * HORIZON_S
        self.hist_stamps = [-1] * _QUANTILE_SLOTS
        self.ttft = [[0] * _BUCKETS for _ in range(_QUANTILE_SLOTS)]
        self.itl = [[0] * _BUCKETS for _ in range(_QUANTILE_SLOTS)]

    def slot(self, second: int) -> int:
        """The index of ``second``'s slot, emptied first if it held an older second."""
        i = second % HORIZON_S
        if self.stamps[i] != second:
            self.stamps[i] = second
            self.requests[i] = self.errors[i] = self.hits[i] = self.lookups[i] = 0
        return i

    def hist_slot(self, second: int) -> int:
        period = second // QUANTILE_SLOT_S
        i = period % _QUANTILE_SLOTS
        if self.hist_stamps[i] != period:
            self.hist_stamps[i] = period
            ttft, itl = self.ttft[i], self.itl[i]
            for b in range(_BUCKETS):
                ttft[b] = itl[b] = 0
        return i


class LiveStats:
    """Recent per-model figures; fed by the request path, read by the status page."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._models: dict[str, _ModelWindow] = {}

    def count(self, model: str, status: int) -> None:
        """One finished request (every request ends here once); 5xx counts as an error."""
        window = self._window(model)
        i = window.slot(int(self._clock()))
        window.requests[i] += 1
        if status >= 500:
            window.errors[i] += 1

    def stream(self, model: str, ttft_s: float | None, itl_s: float | None, broke: bool) -> None:
        """A stream's timings (either may be unknown), and whether it broke after it
        started (an error though its status was 200)."""
        window = self._window(model)
        second = int(self._clock())
        if broke:
            window.errors[window.slot(second)] += 1
        if ttft_s is None and itl_s is None:
            return
        h = window.hist_slot(second)
        if ttft_s is not None:
            window.ttft[h][bisect.bisect_left(BOUNDS, ttft_s)] += 1
        if itl_s is not None:
            window.itl[h][bisect.bisect_left(BOUNDS, itl_s)] += 1

    def cache(self, model: str, hit: bool) -> None:
        """One cache lookup's outcome (bypasses are not lookups)."""
        window = self._window(model)
        i = window.slot(int(self._clock()))
        window.lookups[i] += 1
        if hit:
            window.hits[i] += 1

    def models(self) -> tuple[str, ...]:
        return tuple(self._models)

    def summary(self, series_s: int = 120) -> list[ModelFigures]:
        """Every model seen, with its figures over the horizon (series: the last
        ``series_s`` seconds, at most :data:`HORIZON_S`)."""
        now = int(self._clock())
        series_s = max(1, min(series_s, HORIZON_S))
        return [self._figures(name, w, now, series_s) for name, w in self._models.items()]

    def _window(self, model: str) -> _ModelWindow:
        window = self._models.get(model)
        if window is None:
            if len(self._models) >= MAX_MODELS:
                model = OTHER_MODELS
                window = self._models.get(model)
            if window is None:
                window = self._models[model] = _ModelWindow()
        return window

    def _figures(self, name: str, w: _ModelWindow, now: int, series_s: int) -> ModelFigures:
        oldest = now - HORIZON_S + 1
        live = [i for i, stamp in enumerate(w.stamps) if stamp >= oldest]
        requests = sum(w.requests[i] for i in live)
        errors = sum(w.errors[i] for i in live)
        lookups = sum(w.lookups[i] for i in live)
        hits = sum(w.hits[i] for i in live)
        rate_series = tuple(_at(w, s) for s in range(now - series_s + 1, now + 1))
        recent = sum(rate_series[-RATE_WINDOW_S:])
        newest_period = now // QUANTILE_SLOT_S
        periods = range(newest_period - _QUANTILE_SLOTS + 1, newest_period + 1)
        slots = [w.hist_stamps.index(p) if p in w.hist_stamps else None for p in periods]
        ttft = _merged([w.ttft[i] for i in slots if i is not None])
        itl = _merged([w.itl[i] for i in slots if i is not None])
        shown_periods = max(1, math.ceil(series_s / QUANTILE_SLOT_S))
        ttft_series = tuple(
            quantile(w.ttft[i], 0.95) if i is not None else None for i in slots[-shown_periods:]
        )
        return ModelFigures(
            model=name,
            requests=requests,
            requests_per_s=recent / min(RATE_WINDOW_S, series_s),
            error_rate=min(1.0, errors / requests) if requests else None,
            ttft_p50_s=quantile(ttft, 0.5),
            ttft_p95_s=quantile(ttft, 0.95),
            itl_p50_s=quantile(itl, 0.5),
            itl_p95_s=quantile(itl, 0.95),
            cache_hit_ratio=hits / lookups if lookups else None,
            rate_series=rate_series,
            ttft_p95_series=ttft_series,
        )


def _at(window: _ModelWindow, second: int) -> int:
    i = second % HORIZON_S
    return window.requests[i] if window.stamps[i] == second else 0


def _merged(histograms: list[list[int]]) -> list[int]:
    merged = [0] * _BUCKETS
    for histogram in histograms:
        for b, count in enumerate(histogram):
            if count:
                merged[b] += count
    return merged


def quantile(histogram: list[int], q: float) -> float | None:
    """The ``q`` quantile of a bucket histogram (None: empty): the geometric middle of
    the bucket holding it, so the error is at most half a bucket's width either way."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for b, count in enumerate(histogram):
        seen += count
        if seen >= rank and count:
            if b == 0:
                return BOUNDS[0]
            if b >= len(BOUNDS):
                return BOUNDS[-1]
            return math.sqrt(BOUNDS[b - 1] * BOUNDS[b])
    return BOUNDS[-1]
