"""Paired rounds: two targets loaded alternately, several rounds per concurrency level.

This VM's speed drifts by ±15% within minutes, so two targets measured one after
the other differ by the drift as well as by what they do. As in
:mod:`benchmarks.ratelimit_overhead`, each round runs both targets back to back
(the order reversed every other round) and a difference is taken *within* a round
(the gateway's p50 minus the direct p50 of the same round), then the median over
the rounds: the drift cancels. The spread across rounds is kept and printed, so a
run whose machine changed speed under it shows it.

:func:`run_rounds` does the runs; :func:`compare` and :func:`stream_figures` are
pure functions of the finished samples.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.loadgen import LoadSpec, run_blocking
from benchmarks.sampling import MB, Runner, Sample, measure
from benchmarks.wrk import run_wrk


@dataclass(frozen=True)
class Target:
    """Something to load, and the process group whose memory to sample meanwhile."""

    name: str
    url: str
    rss_group: int | None = None


@dataclass(frozen=True)
class Load:
    """What every run of a set of rounds sends, for how long, and what sends it:
    ``loadgen`` ``python`` (:mod:`benchmarks.loadgen` in this process, with ``client``)
    or ``wrk`` (:mod:`benchmarks.wrk`, non-streaming only, pinned to ``loadgen_cpu``)."""

    body: bytes
    stream: bool
    headers: dict[str, str]
    duration_s: float
    warmup_s: float
    client: str = "raw"
    loadgen: str = "python"
    loadgen_cpu: int | None = None

    def runner(self) -> Runner:
        """The function that runs one load (:func:`benchmarks.sampling.measure` wraps it)."""
        if self.loadgen == "python":
            return run_blocking
        if self.loadgen == "wrk":
            return functools.partial(run_wrk, cpu=self.loadgen_cpu)
        raise ValueError(f"unknown load generator {self.loadgen!r}")


Rounds = dict[int, dict[str, list[Sample]]]


def run_rounds(
    targets: Sequence[Target],
    levels: Sequence[int],
    rounds: int,
    load: Load,
    groups: dict[str, int],
    title: str = "",
) -> Rounds:
    """Every target at every level, ``rounds`` times, the order reversed every other round."""
    results: Rounds = {}
    run = load.runner()
    for conns in levels:
        runs: dict[str, list[Sample]] = {t.name: [] for t in targets}
        for index in range(rounds):
            ordered = list(targets) if index % 2 == 0 else list(reversed(targets))
            for target in ordered:
                spec = LoadSpec(
                    url=target.url, body=load.body, stream=load.stream, concurrency=conns,
                    duration_s=load.duration_s, warmup_s=load.warmup_s, grace_s=10.0,
                    client=load.client, headers=load.headers,
                )  # fmt: skip
                print(f"  {title}{conns:>4} conn  round {index + 1}/{rounds}  {target.name} ...",
                      flush=True)  # fmt: skip
                runs[target.name].append(measure(spec, target.name, groups, target.rss_group, run))
        results[conns] = runs
    return results


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far a figure moved across rounds (NaN when undefined)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan
    middle = statistics.median(finite)
    return (max(finite) - min(finite)) / middle if middle else math.nan


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


@dataclass(frozen=True)
class Side:
    """One target at one level over its rounds: medians, totals, worst cases."""

    name: str
    rounds: int
    p50_ms: float
    p99_ms: float
    rps: float
    rps_spread: float
    errors: int
    cpu_us_per_request: dict[str, float]  # per process group, median over rounds
    cores: dict[str, float]  # per process group, median over rounds
    rss_peak_mb: float  # the highest sample of any round
    other_cores_max: float  # the most CPU processes outside the benchmark took in a round


def side_of(name: str, samples: Sequence[Sample]) -> Side:
    groups = sorted({g for s in samples for g in s.cpu_s})
    return Side(
        name=name,
        rounds=len(samples),
        p50_ms=_median([s.result.e2e.p50 for s in samples]),
        p99_ms=_median([s.result.e2e.p99 for s in samples]),
        rps=_median([s.result.rps for s in samples]),
        rps_spread=spread([s.result.rps for s in samples]),
        errors=sum(s.result.error_count for s in samples),
        cpu_us_per_request={g: _median([s.cpu_us_per_request(g) for s in samples]) for g in groups},
        cores={g: _median([s.cores(g) for s in samples]) for g in groups},
        rss_peak_mb=max((s.rss_peak for s in samples), default=0) / MB,
        other_cores_max=max((s.other_cores() for s in samples), default=0.0),
    )


def paired(
    base: Sequence[Sample], test: Sequence[Sample], figure: Callable[[Sample, Sample], float]
) -> list[float]:
    """``figure(test, base)`` for each round (round i of one against round i of the other)."""
    return [figure(t, b) for b, t in zip(base, test, strict=True)]


@dataclass(frozen=True)
class Comparison:
    """One level: ``test`` (a gateway) against ``base`` (direct, or another gateway)."""

    connections: int
    base: Side
    test: Side
    added_p50_ms: float  # median over rounds of test p50 - base p50 of the same round
    added_p99_ms: float
    added_p50_range: tuple[float, float]  # lowest and highest paired value
    rps_ratio: float  # median over rounds of test req/s / base req/s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(connections: int, runs: dict[str, list[Sample]], base: str, test: str) -> Comparison:
    """The figures of one level, differences paired round by round."""
    b, t = runs[base], runs[test]
    p50 = paired(b, t, lambda x, y: x.result.e2e.p50 - y.result.e2e.p50)
    p99 = paired(b, t, lambda x, y: x.result.e2e.p99 - y.result.e2e.p99)
    ratio = paired(b, t, lambda x, y: x.result.rps / y.result.rps if y.result.rps else math.nan)
    return Comparison(
        connections=connections,
        base=side_of(base, b),
        test=side_of(test, t),
        added_p50_ms=_median(p50),
        added_p99_ms=_median(p99),
        added_p50_range=(min(p50, default=math.nan), max(p50, default=math.nan)),
        rps_ratio=_median(ratio),
    )


def expected_chunks(direct: Sequence[Sample]) -> int:
    """Content chunks per stream as the stub sends them: the most common direct count."""
    counts: Counter[int] = Counter()
    for s in direct:
        counts.update(s.result.chunks_per_request)
    return counts.most_common(1)[0][0] if counts else 0


def lost_chunks(gateway: Sequence[Sample], want: int) -> int:
    """Content chunks missing from completed gateway streams, against ``want`` each."""
    return sum(
        max(0, want - got) * n for s in gateway for got, n in s.result.chunks_per_request.items()
    )


@dataclass(frozen=True)
class StreamFigures:
    """The streams scenario over its rounds (TTFT and gap figures paired)."""

    connections: int
    ttft_ratio: float  # median over rounds of gateway TTFT p50 / direct TTFT p50
    ttft_ratio_range: tuple[float, float]
    gap_p99_extra_ms: float  # median over rounds of gateway gap p99 - direct gap p99
    direct_ttft_p50_ms: float
    gateway_ttft_p50_ms: float
    direct_gap_p99_ms: float
    gateway_gap_p99_ms: float
    chunks_expected: int
    chunks_lost: int
    direct_errors: int
    gateway_errors: int
    gateway_cpu_us_per_stream: float
    gateway_rss_peak_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream_figures(connections: int, runs: dict[str, list[Sample]]) -> StreamFigures:
    d, g = runs["direct"], runs["gateway"]
    ttft = paired(d, g, lambda x, y: x.result.ttft.p50 / y.result.ttft.p50)
    gap = paired(d, g, lambda x, y: x.result.itl.p99 - y.result.itl.p99)
    want = expected_chunks(d)
    return StreamFigures(
        connections=connections,
        ttft_ratio=_median(ttft),
        ttft_ratio_range=(min(ttft, default=math.nan), max(ttft, default=math.nan)),
        gap_p99_extra_ms=_median(gap),
        direct_ttft_p50_ms=_median([s.result.ttft.p50 for s in d]),
        gateway_ttft_p50_ms=_median([s.result.ttft.p50 for s in g]),
        direct_gap_p99_ms=_median([s.result.itl.p99 for s in d]),
        gateway_gap_p99_ms=_median([s.result.itl.p99 for s in g]),
        chunks_expected=want,
        chunks_lost=lost_chunks(g, want),
        direct_errors=sum(s.result.error_count for s in d),
        gateway_errors=sum(s.result.error_count for s in g),
        gateway_cpu_us_per_stream=_median([s.cpu_us_per_request("gateway") for s in g]),
        gateway_rss_peak_mb=max((s.rss_peak for s in g), default=0) / MB,
    )
