"""What request tracing costs: the same gateway with ``telemetry.traces`` off and on.

One invocation starts a zero-delay stub engine, a redis-server (unused by these
configs, started by the shared stack helper) and two gateways pointed at the same
stub: ``off`` (the default: no tracing work on the request path, only the
``Server-Timing`` marks every answer carries) and ``on`` (``telemetry: {traces:
true}``: one span per request with its children, every one sampled). Spans are made
and ended but exported nowhere (``OTEL_TRACES_EXPORTER=none``), so the figure is the
gateway's own cost of tracing; an OTLP exporter adds its batched serialisation and
sending, in a thread, on top. Both gateways run on CPU 0, one measured at a time; the
stub and the load generator share CPU 1. For 1 connection and for ``--connections``
connections it runs the same non-streaming load straight at the stub, through
``off`` and through ``on``, in ``--rounds`` alternating rounds.

Reported (issue #18): the added p50 latency at 1 connection and the ratio of
requests/s at ``--connections`` connections, each the median of paired rounds (round
i of ``on`` against round i of ``off``: this VM's speed drifts within minutes), and
from the latter the CPU cost per request: ``1/rps_on - 1/rps_off`` (one pinned core).

Run: ``python -m benchmarks.tracing_overhead --duration 4 --rounds 8``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.loadgen import chat_body
from benchmarks.measure import RunResult
from benchmarks.procs import Processes
from benchmarks.variants import (
    MODEL,
    Rounds,
    Target,
    begin,
    finish,
    measure_rounds,
    start_stack,
)

OFF = (
    "server: {log_level: warning}\n"
    f"models:\n  - {{name: {MODEL}, endpoints: ['${{STUB_URL}}']}}\n"
)
ON = OFF + "telemetry: {traces: true}\n"


def goals_of(results: Rounds, connections: int) -> dict[str, Any]:
    """The figures, judged on paired rounds (see the module docstring)."""
    single, many = results[1], results[connections]
    added_p50 = _paired(single, lambda on, off: on.e2e.p50 - off.e2e.p50)
    rps_ratio = _paired(many, lambda on, off: on.rps / off.rps)
    cost_us = _paired(many, lambda on, off: (1 / on.rps - 1 / off.rps) * 1e6)
    return {
        "added_p50_ms": added_p50,
        "rps_ratio": rps_ratio,
        "cost_us_per_request": cost_us,
        "off_rps": statistics.median(r.rps for r in many["off"]),
        "on_rps": statistics.median(r.rps for r in many["on"]),
    }


def _paired(
    runs: dict[str, list[RunResult]], figure: Callable[[RunResult, RunResult], float]
) -> float:
    return statistics.median(
        figure(on, off) for on, off in zip(runs["on"], runs["off"], strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    run = begin("tracing_overhead", argv, "telemetry.traces on against off")
    args, body = run.args, chat_body(MODEL)
    os.environ["OTEL_TRACES_EXPORTER"] = "none"  # inherited by the gateways
    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    with Processes(run.log_dir) as procs:
        stub_url, urls = start_stack(procs, run.log_dir, run.pinned, {"off": OFF, "on": ON})
        path = "/v1/chat/completions"
        targets = [
            Target("direct", stub_url + path, body),
            Target("off", urls["off"] + path, body),
            Target("on", urls["on"] + path, body),
        ]
        results = measure_rounds(
            targets, [1, args.connections], args.rounds, args.duration, args.warmup,
            once=frozenset({"direct"}),
        )  # fmt: skip
    goals = goals_of(results, args.connections)
    finish(
        run,
        results,
        goals,
        f"tracing on adds {goals['added_p50_ms']:+.3f} ms at p50 (1 connection) and costs "
        f"{goals['cost_us_per_request']:.1f} µs of CPU per request at {args.connections} "
        f"connections ({goals['rps_ratio']:.1%} of off's req/s: {goals['on_rps']:.0f} vs "
        f"{goals['off_rps']:.0f}); medians of paired rounds, spans exported nowhere",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
