"""Tables, goals and the plot of the sweep mode of :mod:`benchmarks.gateway_overhead`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.overhead_report import OTHER_LOAD_LIMIT, Goal
from benchmarks.report import ms, table
from benchmarks.stream_hold import HoldFigures
from benchmarks.sweep import Comparison, StreamFigures


@dataclass(frozen=True)
class SweepOutcome:
    """Everything the sweep mode measured; any part it did not run is empty or None."""

    mode: str  # "full (auth + limits + cache)" or "plain"
    levels: list[Comparison]
    streams: StreamFigures | None
    hold: HoldFigures | None
    scaling: list[Comparison]  # base: 1 worker, test: N workers
    workers: int


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _us(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def latency_table(levels: Sequence[Comparison]) -> str:
    rows = [
        [
            str(c.connections),
            ms(c.base.p50_ms), ms(c.base.p99_ms), ms(c.test.p50_ms), ms(c.test.p99_ms),
            f"{c.added_p50_ms:+.3f}", f"{c.added_p99_ms:+.3f}",
            f"{c.added_p50_range[0]:+.3f}..{c.added_p50_range[1]:+.3f}",
        ]
        for c in levels
    ]  # fmt: skip
    head = ["conns", "direct p50", "direct p99", "gw p50", "gw p99", "added p50", "added p99",
            "added p50 range"]  # fmt: skip
    return table(head, rows)


def cost_table(levels: Sequence[Comparison]) -> str:
    rows = [
        [
            str(c.connections),
            f"{c.base.rps:,.0f}", f"{c.test.rps:,.0f}", f"{c.rps_ratio:.2f}x",
            f"{c.base.errors}/{c.test.errors}",
            _us(c.test.cpu_us_per_request.get("gateway", math.nan)),
            f"{c.test.cores.get('gateway', 0.0):.2f}",
            _us(c.test.cpu_us_per_request.get("loadgen", math.nan)),
            f"{c.test.rss_peak_mb:.0f}",
            f"{_pct(c.base.rps_spread)}/{_pct(c.test.rps_spread)}",
        ]
        for c in levels
    ]  # fmt: skip
    head = ["conns", "direct req/s", "gw req/s", "gw/direct", "errors d/g", "gw CPU us/req",
            "gw cores", "loadgen us/req", "gw RSS MB", "req/s spread d/g"]  # fmt: skip
    return table(head, rows)


def scaling_table(scaling: Sequence[Comparison], workers: int) -> str:
    rows = []
    for c in scaling:
        for side in (c.base, c.test):
            us = side.cpu_us_per_request
            gw_cores = side.cores.get(side.name, 0.0)
            rows.append([
                f"{c.connections} conns, {side.name}", f"{side.rps:,.0f}", _pct(side.rps_spread),
                f"{gw_cores:.2f}", f"{side.rps / gw_cores:,.0f}" if gw_cores else "-",
                _us(us.get(side.name, math.nan)), _us(us.get("loadgen", math.nan)),
                _us(us.get("stub", math.nan)), _us(us.get("redis", math.nan)),
                f"{sum(side.cores.values()):.2f}",
            ])  # fmt: skip
        rows.append([f"{c.connections} conns, {workers} vs 1 (paired)", f"{c.rps_ratio:.2f}x",
                     "", "", "", "", "", "", "", ""])  # fmt: skip
    head = ["run (median of rounds)", "req/s", "spread", "gw cores", "req/s per gw core",
            "gw us/req", "loadgen us/req", "stub us/req", "redis us/req",
            "cores, all ours"]  # fmt: skip
    return table(head, rows)


def scaling_note(scaling: Sequence[Comparison], workers: int) -> str:
    """Why the N-worker figure is, or is not, a fair measure of scaling on 2 cores."""
    if not scaling:
        return ""
    c = scaling[-1]
    one, many = c.base, c.test
    others = sum(many.cpu_us_per_request.get(name, 0.0) for name in ("loadgen", "stub", "redis"))
    return (
        f"Fairness: 1 worker has core 0 to itself; {workers} workers run on cores 0-1 and share "
        f"core 1 with the stub, Redis and the load generator, which cost {others:,.0f} us of CPU "
        f"per request between them at {c.connections} connections. The 1 worker kept "
        f"{one.cores.get(one.name, 0.0):.2f} cores busy, the {workers} workers "
        f"{many.cores.get(many.name, 0.0):.2f}: the {workers}-worker req/s is what this machine "
        "gives, a lower bound on what they would give with cores of their own, and 'req/s per "
        "gw core' compares the workers' efficiency apart from that."
    )


def goals(outcome: SweepOutcome) -> list[Goal]:
    """Issue #16's goals (one worker, one core; meant for the full mode)."""
    out: list[Goal] = []
    by_conns = {c.connections: c for c in outcome.levels}
    if 1 in by_conns:
        added = by_conns[1].added_p50_ms
        out.append(Goal("goal", "added p50, 1 connection (paired)", f"{added:+.3f} ms",
                        "<= 0.3 ms", added <= 0.3))  # fmt: skip
    if 64 in by_conns:
        c = by_conns[64]
        out.append(Goal("goal", "gateway req/s, 64 connections", f"{c.test.rps:,.0f}, "
                        f"{c.test.errors} err", ">= 6,000, 0 err",
                        c.test.rps >= 6000 and c.test.errors == 0))  # fmt: skip
    s = outcome.streams
    if s is not None:
        out += [
            Goal("goal", f"{s.connections} streams: TTFT p50 gateway/direct",
                 f"{s.ttft_ratio:.2f}x", "<= 1.2x", s.ttft_ratio <= 1.2),
            Goal("goal", f"{s.connections} streams: chunk gap p99 over direct",
                 f"{s.gap_p99_extra_ms:+.3f} ms", "<= +1 ms", s.gap_p99_extra_ms <= 1.0),
            Goal("goal", f"{s.connections} streams: chunks lost, errors",
                 f"{s.chunks_lost} lost, {s.gateway_errors} err", "0, 0",
                 s.chunks_lost == 0 and s.gateway_errors == 0),
        ]  # fmt: skip
    h = outcome.hold
    if h is not None:
        held = h.rss_held_mb if not math.isnan(h.rss_held_mb) else h.rss_peak_mb
        out.append(Goal("goal", f"gateway RSS holding {h.streams} streams", f"{held:.0f} MB "
                        f"(peak {h.rss_peak_mb:.0f})", "<= 100 MB", held <= 100.0))  # fmt: skip
    return out


def hold_line(h: HoldFigures) -> str:
    errors = sum(h.errors.values())
    return (
        f"Holding {h.streams} streams (~{h.stream_s:g} s each): gateway RSS "
        f"{h.idle_rss_mb:.0f} MB idle, {h.rss_held_mb:.0f} MB while >= 95% were open "
        f"(most open at the stub at once: {h.open_max}), peak {h.rss_peak_mb:.0f} MB; "
        f"completed {h.completed}, errors {errors}, chunks lost {h.chunks_lost}"
    )


def render(outcome: SweepOutcome, load: str) -> str:
    """Every table; ``load`` says what sent the load to which upstream (e.g. "raw client,
    stub upstream")."""
    parts = [f"Sweep, {outcome.mode} gateway, 1 worker on core 0 [{load}; medians of "
             "paired rounds; 'added' = gateway minus direct of the same round]",
             latency_table(outcome.levels), "", cost_table(outcome.levels),
             "(gw CPU us/req: the gateway's CPU time over every request it answered in the run; "
             "gw cores: the cores it kept busy; gw RSS: the peak sampled)", ""]  # fmt: skip
    busy = [str(c.connections) for c in outcome.levels
            if max(c.base.other_cores_max, c.test.other_cores_max) > OTHER_LOAD_LIMIT]  # fmt: skip
    if busy:
        parts += [f"WARNING: processes outside the benchmark used more than "
                  f"{OTHER_LOAD_LIMIT:.0%} of a core during a round at {', '.join(busy)} "
                  "connections: those figures are skewed.", ""]  # fmt: skip
    s = outcome.streams
    if s is not None:
        parts += [
            f"Streams, {s.connections} at once: TTFT p50 direct {ms(s.direct_ttft_p50_ms)} ms, "
            f"gateway {ms(s.gateway_ttft_p50_ms)} ms, ratio {s.ttft_ratio:.2f}x (rounds "
            f"{s.ttft_ratio_range[0]:.2f}..{s.ttft_ratio_range[1]:.2f}); chunk gap p99 direct "
            f"{ms(s.direct_gap_p99_ms)} ms, gateway {ms(s.gateway_gap_p99_ms)} ms, "
            f"{s.gap_p99_extra_ms:+.3f} ms; chunks lost {s.chunks_lost} (of "
            f"{s.chunks_expected} per stream); errors {s.direct_errors}/{s.gateway_errors}; "
            f"gateway {s.gateway_cpu_us_per_stream:,.0f} us CPU per stream", ""]  # fmt: skip
    if outcome.hold is not None:
        parts += [hold_line(outcome.hold), ""]
    if outcome.scaling:
        parts += [f"Scaling: 1 worker (core 0) vs {outcome.workers} workers (cores 0-1), "
                  "same config, paired rounds", scaling_table(outcome.scaling, outcome.workers),
                  scaling_note(outcome.scaling, outcome.workers), ""]  # fmt: skip
    rows = [[g.name, g.measured, g.target, "PASS" if g.passed else "FAIL"] for g in goals(outcome)]
    if rows:
        parts.append(table(["issue #16 goal", "measured", "target", "result"], rows))
        if not outcome.mode.startswith("full"):
            parts.append("(issue #16's goals are meant for --full: auth, limits and cache on)")
    return "\n".join(parts)


def plot_sweep(path: Path, outcome: SweepOutcome) -> None:
    """Added latency, req/s and gateway CPU per request against the connection count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = outcome.levels
    xs = [c.connections for c in levels]
    ticks = sorted({*xs, *(c.connections for c in outcome.scaling)})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    added, rps, cpu = axes
    added.plot(xs, [c.added_p50_ms for c in levels], "o-", label="added p50")
    added.plot(xs, [c.added_p99_ms for c in levels], "s--", label="added p99")
    added.axhline(0.3, color="grey", linewidth=0.6, linestyle=":", label="0.3 ms goal (1 conn)")
    added.set_ylabel("gateway minus direct, same round (ms)")
    added.set_yscale("symlog", linthresh=0.1)  # 0.1 ms to 100s of ms in one panel
    if all(c.added_p50_ms >= 0 and c.added_p99_ms >= 0 for c in levels):
        added.set_ylim(bottom=0)
    rps.plot(xs, [c.base.rps for c in levels], "o-", label="direct")
    rps.plot(xs, [c.test.rps for c in levels], "s-", label="gateway, 1 worker")
    if outcome.scaling:
        rps.plot([c.connections for c in outcome.scaling], [c.test.rps for c in outcome.scaling],
                 "^:", label=f"gateway, {outcome.workers} workers (cores 0-1)")  # fmt: skip
    rps.axhline(6000, color="grey", linewidth=0.6, linestyle=":", label="6,000 goal (64 conns)")
    rps.set_ylabel("requests/s (median of rounds)")
    rps.set_yscale("log")
    cpu.plot(xs, [c.test.cpu_us_per_request.get("gateway", math.nan) for c in levels], "o-",
             label="gateway")  # fmt: skip
    cpu.plot(xs, [c.test.cpu_us_per_request.get("loadgen", math.nan) for c in levels], "s--",
             label="load generator")  # fmt: skip
    cpu.set_ylabel("CPU µs per request (gateway runs)")
    cpu.set_ylim(bottom=0)
    for ax, title in zip(axes, ("added latency", "throughput", "CPU per request"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.set_xlabel("connections (closed loop)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"gateway_overhead sweep: {outcome.mode}, 1 worker on core 0", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
