"""Goals, tables and files of the gateway-overhead benchmark (direct vs gateway)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import RunResult
from benchmarks.report import machine_info, ms, plot_cdfs, table, write_json


@dataclass(frozen=True)
class Pair:
    """One scenario run twice: straight at the stub and through the gateway."""

    key: str
    title: str
    direct: RunResult
    gateway: RunResult
    direct_cpu: dict[str, float]
    gateway_cpu: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "direct": {**self.direct.to_dict(), "cpu_share": self.direct_cpu},
            "gateway": {**self.gateway.to_dict(), "cpu_share": self.gateway_cpu},
        }


@dataclass(frozen=True)
class Goal:
    """A checked figure; ``tier`` is "gate" (this benchmark's pass mark) or "budget" (§5b)."""

    tier: str
    name: str
    measured: str
    target: str
    passed: bool


def expected_chunks(pair: Pair) -> int:
    """Content chunks per stream as the stub sends them (the most common direct count)."""
    counts = pair.direct.chunks_per_request
    return max(counts, key=lambda k: counts[k]) if counts else 0


def lost_chunks(pair: Pair) -> int:
    """Content chunks missing from completed gateway streams, against the direct count."""
    want = expected_chunks(pair)
    return sum(max(0, want - got) * n for got, n in pair.gateway.chunks_per_request.items())


def evaluate_goals(pairs: dict[str, Pair]) -> list[Goal]:
    a, b, c = pairs["a"], pairs["b"], pairs["c"]
    added_p50 = a.gateway.e2e.p50 - a.direct.e2e.p50
    rps, b_errors = b.gateway.rps, b.gateway.error_count
    ttft_ratio = c.gateway.ttft.p50 / c.direct.ttft.p50
    gap_extra = c.gateway.itl.p99 - c.direct.itl.p99
    lost, c_errors = lost_chunks(c), c.gateway.error_count
    return [
        Goal(
            "gate",
            "(a) added latency p50, 1 connection",
            f"{added_p50:.3f} ms",
            "<= 1 ms",
            added_p50 <= 1.0,
        ),
        Goal(
            "gate",
            "(b) gateway req/s, 64 conns, 0 errors",
            f"{rps:,.0f} req/s, {b_errors} err",
            ">= 1,500 req/s, 0 err",
            rps >= 1500 and b_errors == 0,
        ),
        Goal(
            "budget",
            "(a) added latency p50, 1 connection",
            f"{added_p50:.3f} ms",
            "<= 0.3 ms",
            added_p50 <= 0.3,
        ),
        Goal(
            "budget",
            "(b) gateway req/s, 64 conns, 0 errors",
            f"{rps:,.0f} req/s, {b_errors} err",
            ">= 5,000 req/s, 0 err",
            rps >= 5000 and b_errors == 0,
        ),
        Goal(
            "budget",
            "(c) TTFT p50 gateway/direct",
            f"{ttft_ratio:.2f}x",
            "<= 1.3x",
            ttft_ratio <= 1.3,
        ),
        Goal(
            "budget",
            "(c) chunk gap p99 over direct",
            f"{gap_extra:+.3f} ms",
            "<= +1 ms",
            gap_extra <= 1.0,
        ),
        Goal(
            "budget",
            "(c) chunks lost, stream errors",
            f"{lost} lost, {c_errors} err",
            "0 lost, 0 err",
            lost == 0 and c_errors == 0,
        ),
    ]


def _errors(r: RunResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(r.errors.items())) or "0"


def _diff(d: float, g: float, ratio: bool = False) -> str:
    if math.isnan(d) or math.isnan(g):
        return "-"
    return f"{g / d:.2f}x" if ratio else f"{g - d:+.3f}"


OTHER_LOAD_LIMIT = 0.1  # of a core, used by processes that are not part of the benchmark

Row = tuple[str, Callable[[RunResult], float], str]

_E2E: list[Row] = [
    ("e2e p50 ms", lambda r: r.e2e.p50, "ms"),
    ("e2e p95 ms", lambda r: r.e2e.p95, "ms"),
    ("e2e p99 ms", lambda r: r.e2e.p99, "ms"),
]
SECTIONS: dict[str, list[Row]] = {
    "a": [*_E2E, ("e2e mean ms", lambda r: r.e2e.mean, "ms"), ("req/s", lambda r: r.rps, "x")],
    "b": [("req/s", lambda r: r.rps, "x"), *_E2E],
    "c": [
        ("TTFT p50 ms", lambda r: r.ttft.p50, "ratio"),
        ("TTFT p99 ms", lambda r: r.ttft.p99, "ratio"),
        ("chunk gap p50 ms", lambda r: r.itl.p50, "ms"),
        ("chunk gap p99 ms", lambda r: r.itl.p99, "ms"),
        ("e2e p50 ms", lambda r: r.e2e.p50, "ms"),
        ("streams/s", lambda r: r.rps, "x"),
        ("tokens/s", lambda r: r.tokens_per_s, "x"),
    ],
}
_CPU = (
    ("gateway", "CPU gateway (core 0)"),
    ("stub", "CPU stub (core 1)"),
    ("loadgen", "CPU loadgen (core 1)"),
    ("other", "CPU other processes"),
)


def _rows(pair: Pair, specs: list[Row]) -> list[list[str]]:
    out = []
    for label, get, kind in specs:
        d, g = get(pair.direct), get(pair.gateway)
        if kind == "x":
            out.append([label, f"{d:,.0f}", f"{g:,.0f}", f"{g / d:.2f}x" if d else "-"])
        else:
            out.append([label, ms(d), ms(g), _diff(d, g, ratio=kind == "ratio")])
    out.append(["errors", _errors(pair.direct), _errors(pair.gateway), ""])
    for key, label in _CPU:
        d_cpu, g_cpu = pair.direct_cpu.get(key), pair.gateway_cpu.get(key)
        out.append([label, f"{d_cpu or 0:.0%}", f"{g_cpu or 0:.0%}", ""])
    return out


def render(pairs: dict[str, Pair], goals: list[Goal], client: str) -> str:
    """The comparison tables of every scenario, then the goals."""
    head = ["metric", "direct", "gateway", "gateway vs direct"]
    c = pairs["c"]
    parts = []
    for key, specs in SECTIONS.items():
        pair = pairs[key]
        parts.append(
            f"({pair.key}) {pair.title}   [{client} client; "
            f"direct n={pair.direct.ok}, gateway n={pair.gateway.ok}]"
        )
        parts.append(table(head, _rows(pair, specs)))
        parts.append("")
    parts.append(
        f"(c) chunks per stream: direct {_counts(c.direct)}; gateway {_counts(c.gateway)};"
        f" lost {lost_chunks(c)}"
    )
    parts.append("CPU: share of one core used during the run, warm-up included.")
    busy = [
        f"({p.key}) {name}"
        for p in pairs.values()
        for name, cpu in (("direct", p.direct_cpu), ("gateway", p.gateway_cpu))
        if cpu.get("other", 0.0) > OTHER_LOAD_LIMIT
    ]
    if busy:
        parts.append(
            "WARNING: other processes used more than "
            f"{OTHER_LOAD_LIMIT:.0%} of a core during {', '.join(busy)}: those figures are skewed."
        )
    parts.append("")
    rows = [[g.tier, g.name, g.measured, g.target, "PASS" if g.passed else "FAIL"] for g in goals]
    parts.append(table(["tier", "goal", "measured", "target", "result"], rows))
    return "\n".join(parts)


def _counts(r: RunResult) -> str:
    return ", ".join(f"{k}x{v}" for k, v in sorted(r.chunks_per_request.items())) or "-"


def write_outputs(
    out: Path, stem: str, meta: dict[str, Any], pairs: dict[str, Pair], goals: list[Goal]
) -> tuple[Path, Path]:
    """``<stem>.json`` (all figures) and ``<stem>.png`` (latency CDFs) under ``out``."""
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    write_json(
        json_path,
        {
            **meta,
            "machine": machine_info(),
            "scenarios": {key: pair.to_dict() for key, pair in pairs.items()},
            "goals": [asdict(g) for g in goals],
            "chunks_lost": lost_chunks(pairs["c"]),
        },
    )
    a, b, c = pairs["a"], pairs["b"], pairs["c"]
    plot_cdfs(
        png_path,
        [
            (f"(a) {a.title}: end-to-end", [a.direct, a.gateway], "e2e", True),
            (f"(b) {b.title}: end-to-end", [b.direct, b.gateway], "e2e", True),
            ("(c) streams: time to first content chunk", [c.direct, c.gateway], "ttft", True),
            ("(c) streams: gap between content chunks", [c.direct, c.gateway], "itl", False),
        ],
    )
    return json_path, png_path
