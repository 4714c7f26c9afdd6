"""The gateway's memory while it holds many streams open at once.

``--hold-streams`` (default 1,000) clients each open one slow stream through the
gateway at the same moment: the stub is told to send ``tokens`` chunks a long gap
apart, so every stream stays open for ``--hold-seconds``. Meanwhile a thread
samples, four times a second, the gateway's resident memory (all its processes)
and the stub's count of requests in flight (``GET /stub/stats``), which says when
all the streams were really open at once. Reported: the memory before, at its
peak, and the median while at least 95% of the streams were open at the stub.
"""

from __future__ import annotations

import math
import statistics
import threading
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from benchmarks.loadgen import LoadSpec, run_blocking
from benchmarks.procs import group_pids, rss_bytes
from benchmarks.sampling import MB

OPEN_SHARE = 0.95  # of the streams open at the stub: the samples that count as "all open"


@dataclass(frozen=True)
class HoldFigures:
    streams: int
    stream_s: float
    idle_rss_mb: float  # before the streams
    rss_peak_mb: float
    rss_held_mb: float  # median while >= 95% of the streams were open (NaN: never)
    open_max: int  # the most requests the stub had in flight at one sample
    completed: int
    errors: dict[str, int]
    chunks_lost: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Watcher:
    """Samples (gateway RSS, stub requests in flight) until stopped."""

    def __init__(self, pgid: int, stub_url: str, interval_s: float = 0.25) -> None:
        self._pids = group_pids(pgid)
        self._stats_url = f"{stub_url}/stub/stats"
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hold-watcher", daemon=True)
        self.samples: list[tuple[int, int]] = []

    def idle_rss(self) -> int:
        return rss_bytes(self._pids)

    def _in_flight(self) -> int:
        try:
            with urllib.request.urlopen(self._stats_url, timeout=1.0) as response:
                return int(orjson.loads(response.read()).get("in_flight", -1))
        except (OSError, ValueError):
            return -1

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.samples.append((rss_bytes(self._pids), self._in_flight()))

    def __enter__(self) -> _Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def hold_body_stub(tokens: int, stream_s: float) -> dict[str, float]:
    """The stub's timing for a stream of ``tokens`` chunks lasting about ``stream_s``."""
    gap_ms = stream_s * 1000.0 / max(tokens, 1)
    return {"tokens": tokens, "ttft_ms": gap_ms, "itl_ms": gap_ms}


def hold_streams(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    streams: int,
    tokens: int,
    stream_s: float,
    gateway_pgid: int,
    stub_url: str,
    client: str = "raw",
) -> HoldFigures:
    """Open ``streams`` streams through the gateway at once and watch its memory."""
    spec = LoadSpec(
        url=url, body=body, stream=True, concurrency=streams, duration_s=1.0, warmup_s=0.0,
        grace_s=stream_s + 30.0, max_requests=streams, client=client, headers=headers,
    )  # fmt: skip
    watcher = _Watcher(gateway_pgid, stub_url)
    idle = watcher.idle_rss()
    print(f"  hold {streams} streams of ~{stream_s:g} s through the gateway ...", flush=True)
    with watcher:
        result = run_blocking(spec, "hold")
    samples = watcher.samples or [(idle, 0)]
    held = [rss for rss, open_ in samples if open_ >= OPEN_SHARE * streams]
    completed = sum(result.chunks_per_request.values())
    lost = sum(max(0, tokens - got) * n for got, n in result.chunks_per_request.items())
    return HoldFigures(
        streams=streams,
        stream_s=stream_s,
        idle_rss_mb=idle / MB,
        rss_peak_mb=max(rss for rss, _ in samples) / MB,
        rss_held_mb=statistics.median(held) / MB if held else math.nan,
        open_max=max(open_ for _, open_ in samples),
        completed=completed,
        errors=result.errors,
        chunks_lost=lost,
    )
