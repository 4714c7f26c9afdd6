"""Human and machine output of benchmark runs: text tables, JSON, PNG plots."""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from benchmarks.measure import RunResult
from benchmarks.stats import Summary, cdf_points, percentile


def ms(value: float) -> str:
    """A latency in ms with a precision that suits its size."""
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _latency_line(name: str, s: Summary) -> str:
    return (
        f"  {name:<9} p50 {ms(s.p50):>8}  p95 {ms(s.p95):>8}  p99 {ms(s.p99):>8}  "
        f"mean {ms(s.mean):>8}  max {ms(s.max):>8}  (ms, n={s.count})"
    )


def describe_run(r: RunResult) -> str:
    """A few lines: throughput, errors and each latency that has samples."""
    errors = ", ".join(f"{k}={v}" for k, v in sorted(r.errors.items())) or "none"
    lines = [
        f"{r.label}: {r.ok} ok in {r.duration_s:.1f} s = {r.rps:,.0f} req/s, "
        f"{r.tokens_per_s:,.0f} tokens/s; errors: {errors}",
        _latency_line("e2e", r.e2e),
    ]
    if r.ttft.count:
        lines.append(_latency_line("ttft", r.ttft))
    if r.itl.count:
        lines.append(_latency_line("chunk gap", r.itl))
        lines.append(
            f"  chunks    {r.chunks} content chunks; per request: "
            + ", ".join(f"{k}x{v}" for k, v in sorted(r.chunks_per_request.items()))
        )
    if r.send_lag.count and r.settings.get("mode") == "open":
        lines.append(_latency_line("send lag", r.send_lag))
        lines.append(_latency_line("service", r.service))
    return "\n".join(lines)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]

    def fmt(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [f"{first:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(rest, widths[1:], strict=True))]
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


def machine_info() -> dict[str, Any]:
    """Where the figures were taken: host, CPU, Python and key library versions."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for name in ("aiohttp", "httptools", "uvloop", "uvicorn", "orjson", "fastapi"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # a missing package is simply not listed
            continue
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))


def plot_cdfs(path: Path, panels: Sequence[tuple[str, Sequence[RunResult], str, bool]]) -> None:
    """Latency CDFs, one panel per (title, runs, sample name, log-scaled x), two per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows), squeeze=False)
    for ax, (title, runs, sample, log_x) in zip(axes.flat, panels, strict=False):
        for run in runs:
            xs, ys = cdf_points(run.samples.get(sample, []))
            if xs:
                ax.plot(xs, ys, label=run.label, linewidth=1.6)
        ax.set_title(title, fontsize=10)
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:  # show the body of the distribution, not one far outlier
            tails = [percentile(sorted(r.samples.get(sample, [])), 99.9) for r in runs]
            if tails and not any(math.isnan(t) for t in tails):
                ax.set_xlim(0, max(tails) * 1000.0 * 1.3)
        ax.set_xlabel(f"{sample} (ms{', log scale' if log_x else ''})")
        ax.set_ylabel("fraction of gaps" if sample == "itl" else "fraction of requests")
        ax.set_ylim(0, 1.0)
        for q in (0.5, 0.99):
            ax.axhline(q, color="grey", linewidth=0.6, linestyle=":")
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
