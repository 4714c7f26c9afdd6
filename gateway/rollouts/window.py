"""What each rollout variant did over the last ``slo.window_s`` seconds, in bounded memory.

The controller compares a canary with the stable variants over a sliding window:
requests, failures, TTFT p95 and ITL p95. Keeping every sample would grow with the
traffic, so a window is a ring of time buckets (:data:`BUCKETS_PER_WINDOW` of them),
each holding counts and two latency histograms with log-spaced bins (each bin
:data:`BIN_GROWTH` times wider than the last: a p95 is known to within ±2.5%,
far finer than the SLO ratios it is compared with). The window also keeps the
running sum of its live buckets, so :meth:`VariantWindow.observe` is O(1)
(amortised: a bucket that ages out is subtracted once) and a quantile is one
scan of the bins.

Every replica keeps its own windows and judges from its own traffic (see
:mod:`gateway.rollouts.controller`). Times are ``time.monotonic()`` seconds,
passed in, so the tests feed observations with explicit times.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BUCKETS_PER_WINDOW = 30
BIN_GROWTH = 1.05
SMALLEST_S = 1e-4
"""Latencies below 0.1 ms share the first bin; above ~10 min the last one."""
BINS = math.ceil(math.log(1e4 / SMALLEST_S) / math.log(BIN_GROWTH)) + 1
_LOG_GROWTH = math.log(BIN_GROWTH)


def bin_of(seconds: float) -> int:
    """The histogram bin of a latency (non-finite or negative values: the first)."""
    if not seconds > SMALLEST_S:  # also NaN
        return 0
    if math.isinf(seconds):
        return BINS - 1
    return min(BINS - 1, int(math.log(seconds / SMALLEST_S) / _LOG_GROWTH) + 1)


def bin_value(index: int) -> float:
    """The latency a bin stands for: its geometric middle."""
    if index == 0:
        return SMALLEST_S
    return SMALLEST_S * math.exp(_LOG_GROWTH * (index - 0.5))


@dataclass(frozen=True, slots=True)
class WindowStats:
    """One variant (or several, merged) over the window."""

    requests: int
    failures: int
    ttft_samples: int
    ttft_p95_s: float | None
    itl_samples: int
    itl_p95_s: float | None

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def public(self) -> dict[str, float | int | None]:
        """As ``/admin/rollouts`` shows it."""
        return {
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": round(self.error_rate, 6),
            "ttft_p95_s": self.ttft_p95_s,
            "itl_p95_s": self.itl_p95_s,
        }


EMPTY = WindowStats(0, 0, 0, None, 0, None)


@dataclass(slots=True)
class _Bucket:
    epoch: int = -1
    requests: int = 0
    failures: int = 0
    ttft: Counter[int] = field(default_factory=Counter)
    itl: Counter[int] = field(default_factory=Counter)


class VariantWindow:
    """Requests, failures and latency histograms over the last ``window_s`` seconds."""

    def __init__(self, window_s: float, buckets: int = BUCKETS_PER_WINDOW) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("a window needs a positive length and at least one bucket")
        self._bucket_s = window_s / buckets
        self._ring = [_Bucket() for _ in range(buckets)]
        self._requests = 0
        self._failures = 0
        self._ttft = [0] * BINS
        self._itl = [0] * BINS
        self._ttft_count = 0
        self._itl_count = 0

    def observe(
        self, now: float, *, failed: bool, ttft_s: float | None, itl_s: float | None
    ) -> None:
        bucket = self._current(now)
        bucket.requests += 1
        self._requests += 1
        if failed:
            bucket.failures += 1
            self._failures += 1
        if ttft_s is not None:
            index = bin_of(ttft_s)
            bucket.ttft[index] += 1
            self._ttft[index] += 1
            self._ttft_count += 1
        if itl_s is not None:
            index = bin_of(itl_s)
            bucket.itl[index] += 1
            self._itl[index] += 1
            self._itl_count += 1

    def stats(self, now: float) -> WindowStats:
        return merged_stats((self,), now)

    def clear(self) -> None:
        """Forget everything (an operator re-enabled the variant: judge it afresh)."""
        for bucket in self._ring:
            self._drop(bucket)

    def expire(self, now: float) -> None:
        """Drop the buckets older than the window as of ``now``."""
        oldest = self._epoch(now) - len(self._ring) + 1
        for bucket in self._ring:
            if bucket.epoch < oldest:
                self._drop(bucket)

    def _epoch(self, now: float) -> int:
        return math.floor(now / self._bucket_s)

    def _current(self, now: float) -> _Bucket:
        epoch = self._epoch(now)
        bucket = self._ring[epoch % len(self._ring)]
        if bucket.epoch != epoch:
            self._drop(bucket)
            bucket.epoch = epoch
        return bucket

    def _drop(self, bucket: _Bucket) -> None:
        self._requests -= bucket.requests
        self._failures -= bucket.failures
        for index, count in bucket.ttft.items():
            self._ttft[index] -= count
            self._ttft_count -= count
        for index, count in bucket.itl.items():
            self._itl[index] -= count
            self._itl_count -= count
        bucket.epoch, bucket.requests, bucket.failures = -1, 0, 0
        bucket.ttft.clear()
        bucket.itl.clear()


def merged_stats(windows: Sequence[VariantWindow], now: float, q: float = 0.95) -> WindowStats:
    """The windows taken together (the stable variants compared as one)."""
    for window in windows:
        window.expire(now)
    return WindowStats(
        requests=sum(w._requests for w in windows),
        failures=sum(w._failures for w in windows),
        ttft_samples=sum(w._ttft_count for w in windows),
        ttft_p95_s=quantile([w._ttft for w in windows], q),
        itl_samples=sum(w._itl_count for w in windows),
        itl_p95_s=quantile([w._itl for w in windows], q),
    )


def quantile(histograms: Sequence[Sequence[int]], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of the histograms summed; None when empty."""
    total = sum(sum(h) for h in histograms)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in range(BINS):
        seen += sum(h[index] for h in histograms)
        if seen >= rank:
            return bin_value(index)
    return bin_value(BINS - 1)  # pragma: no cover - rank <= total


class RolloutWindows:
    """Every rollout variant's window: the :class:`VariantObserver` the request path calls.

    Only variants of configured rollouts are kept (a report naming anything else is
    ignored), so the memory is bounded by the config, never by what requests say."""

    def __init__(
        self, window_s: Mapping[str, float], variants: Mapping[str, Iterable[str]]
    ) -> None:
        self._windows = {
            rollout: {variant: VariantWindow(window_s[rollout]) for variant in names}
            for rollout, names in variants.items()
        }

    def observe(
        self,
        rollout: str,
        variant: str,
        *,
        failed: bool,
        ttft_s: float | None,
        itl_s: float | None,
        now: float | None = None,
    ) -> None:
        window = self._windows.get(rollout, {}).get(variant)
        if window is not None:
            window.observe(_now(now), failed=failed, ttft_s=ttft_s, itl_s=itl_s)

    def stats(self, rollout: str, variants: Iterable[str], now: float | None = None) -> WindowStats:
        """The named variants of ``rollout`` merged (unknown ones count as empty)."""
        known = self._windows.get(rollout, {})
        windows = [known[v] for v in variants if v in known]
        return merged_stats(windows, _now(now)) if windows else EMPTY

    def clear(self, rollout: str, variant: str) -> None:
        window = self._windows.get(rollout, {}).get(variant)
        if window is not None:
            window.clear()


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
