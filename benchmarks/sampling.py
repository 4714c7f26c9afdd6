"""One load run with its cost: the CPU each process group used and the gateway's memory.

:func:`measure` wraps :func:`benchmarks.loadgen.run_blocking` (or another runner, such
as :func:`benchmarks.wrk.run_wrk`). Around the run it reads the CPU seconds of every
named process group (the gateway, the stub, Redis) and of the load generator (this
process, plus the children it ran and waited for during the run: ``wrk``), and while
the run goes a thread samples
the resident memory of one group (the gateway) a few times a second. CPU per
request divides by *every* request answered during the run, warm-up included,
because the CPU readings cover the warm-up too.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from benchmarks.loadgen import LoadSpec, run_blocking
from benchmarks.measure import RunResult
from benchmarks.procs import busy_between, cpu_ticks, group_cpu_seconds, group_pids, rss_bytes

MB = 1024 * 1024


def own_cpu_seconds() -> float:
    """User + system CPU seconds this process (the load generator) used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def loadgen_cpu_seconds() -> float:
    """This process's CPU seconds plus those of its children that ended and were waited
    for: a load generator run as a child (``wrk``) counts as the load generator. The
    benchmark's long-lived children (stub, gateway) are waited for only when they stop,
    so they never fall between two readings of one run."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own_cpu_seconds() + children.ru_utime + children.ru_stime


class RssSampler:
    """A thread reading the resident memory of a process group every ``interval_s``.

    The group's pids are looked up once at the start (a gateway's workers are all
    up by then), so each sample reads a few small files rather than all of /proc.
    """

    def __init__(self, pgid: int | None, interval_s: float = 0.25) -> None:
        self._pids = group_pids(pgid) if pgid is not None else []
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.samples: list[int] = []

    def _loop(self) -> None:
        while True:
            self.samples.append(rss_bytes(self._pids))
            if self._stop.wait(self._interval):
                return

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)

    def __enter__(self) -> RssSampler:
        if self._pids:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.samples.append(rss_bytes(self._pids))


@dataclass(frozen=True)
class Sample:
    """One run's figures and what it cost; CPU in seconds over the whole run."""

    result: RunResult
    requests: int  # answered during the run, warm-up included
    wall_s: float
    cpu_s: dict[str, float]  # per process group, and "loadgen" for this process
    machine_busy: float  # cores busy during the run, any process
    rss_peak: int  # bytes, of the sampled group (0 when none)
    rss_samples: list[int] = field(repr=False, default_factory=list)

    def cpu_us_per_request(self, name: str) -> float:
        """CPU microseconds of ``name`` per answered request (NaN without requests)."""
        if not self.requests:
            return float("nan")
        return self.cpu_s.get(name, 0.0) / self.requests * 1e6

    def cores(self, name: str) -> float:
        """How many cores ``name`` kept busy on average during the run."""
        return self.cpu_s.get(name, 0.0) / self.wall_s if self.wall_s else 0.0

    def other_cores(self) -> float:
        """Cores used by processes that are not part of the benchmark."""
        return max(0.0, self.machine_busy - sum(self.cpu_s.values()) / self.wall_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.result.to_dict(),
            "requests_incl_warmup": self.requests,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "cpu_us_per_request": {name: self.cpu_us_per_request(name) for name in self.cpu_s},
            "other_cores": self.other_cores(),
            "rss_peak_mb": self.rss_peak / MB,
            "rss_median_mb": statistics.median(self.rss_samples) / MB if self.rss_samples else 0,
        }


Runner = Callable[[LoadSpec, str], RunResult]


def measure(
    spec: LoadSpec,
    label: str,
    groups: dict[str, int],
    rss_group: int | None,
    run: Runner = run_blocking,
) -> Sample:
    """Run ``spec`` once with ``run``, reading the CPU of ``groups`` (name → pgid) and of
    the load generator around it and sampling the memory of the ``rss_group`` process
    group during it."""
    before = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    before["loadgen"] = loadgen_cpu_seconds()
    ticks = cpu_ticks()
    started = time.perf_counter()
    with RssSampler(rss_group) as rss:
        result = run(spec, label)
    wall = time.perf_counter() - started
    machine = sum(busy_between(ticks, cpu_ticks()).values())
    after = {name: group_cpu_seconds(pgid) for name, pgid in groups.items()}
    after["loadgen"] = loadgen_cpu_seconds()
    return Sample(
        result=result,
        requests=result.ok + result.error_count + result.warmup_or_late,
        wall_s=wall,
        cpu_s={name: after[name] - before[name] for name in after},
        machine_busy=machine,
        rss_peak=rss.peak,
        rss_samples=rss.samples,
    )
