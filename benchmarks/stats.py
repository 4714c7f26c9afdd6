"""Summary statistics of latency samples.

Samples are seconds (``time.perf_counter`` differences); summaries are in
milliseconds, the unit every report of this package uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

PERCENTILES: tuple[float, ...] = (50.0, 95.0, 99.0)


@dataclass(frozen=True, slots=True)
class Summary:
    """Count, mean, p50/p95/p99 and max of a set of samples, in milliseconds."""

    count: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


EMPTY = Summary(count=0, mean=math.nan, p50=math.nan, p95=math.nan, p99=math.nan, max=math.nan)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted samples, linearly interpolated.

    Interpolation between closest ranks, as numpy's default, so the figures can
    be checked against ``numpy.percentile``.
    """
    if not ordered:
        return math.nan
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    weight = rank - low
    return ordered[low] * (1.0 - weight) + ordered[high] * weight


def summarize(samples_s: Sequence[float]) -> Summary:
    """Summarize samples given in seconds; an empty input yields NaNs and a zero count."""
    if not samples_s:
        return EMPTY
    ordered = sorted(samples_s)
    ms = 1000.0
    return Summary(
        count=len(ordered),
        mean=math.fsum(ordered) / len(ordered) * ms,
        p50=percentile(ordered, 50.0) * ms,
        p95=percentile(ordered, 95.0) * ms,
        p99=percentile(ordered, 99.0) * ms,
        max=ordered[-1] * ms,
    )


def cdf_points(samples_s: Sequence[float], points: int = 400) -> tuple[list[float], list[float]]:
    """At most ``points`` (latency ms, cumulative fraction) pairs for plotting a CDF."""
    ordered = sorted(samples_s)
    n = len(ordered)
    if n == 0:
        return [], []
    step = max(1, n // points)
    indices = [*range(0, n, step), n - 1] if (n - 1) % step else list(range(0, n, step))
    return [ordered[i] * 1000.0 for i in indices], [(i + 1) / n for i in indices]
