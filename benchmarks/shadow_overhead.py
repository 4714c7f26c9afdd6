"""What shadow traffic costs the primary requests (issue #17): the same rollout with its
shadow off and on.

One invocation starts a zero-delay stub engine and two gateways pointed at it, both
serving a rollout ``bench`` whose one variant is the stub's model: ``shadow_off`` and
``shadow_on``, where every request (``share: 1.0``) is also copied, in the background
and non-streaming, to a shadow model (another stub engine), at most
``max_concurrent`` copies at once, the rest shed. Requests are deterministic
(temperature 0), so every copy is also compared with its primary (the agreement
metrics). The shadow model is served by a second stub, as a shadow is another engine
in production. Both gateways run on CPU 0, one measured at a time; the stubs and the
load generator share CPU 1. For 1 connection and for ``--connections`` connections it runs
the same non-streaming load through each in ``--rounds`` alternating rounds.

Goal (issue #17, acceptance 1): the primary's p50 with shadow on stays within noise of
shadow off, judged on paired rounds at 1 connection: the added p50 is no larger than
how far shadow off's own p50 moved across its rounds (the noise of this machine).

Run: ``python -m benchmarks.shadow_overhead --duration 4 --rounds 8``.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.loadgen import chat_body
from benchmarks.measure import RunResult
from benchmarks.procs import Processes, free_port
from benchmarks.variants import (
    MODEL,
    SIDE_CPU,
    Rounds,
    Target,
    begin,
    finish,
    measure_rounds,
    start_stack,
)

ROLLOUT = "bench"
MAX_CONCURRENT = 8
NOISE_FLOOR_MS = 0.05
"""Below this, a difference of p50s is under the load generator's own resolution."""
SHADOW_OFF = (
    "server: {log_level: warning}\n"
    "models:\n"
    f"  - {{name: {MODEL}, endpoints: ['${{STUB_URL}}']}}\n"
    f"  - {{name: shadow-model, endpoints: ['${{SHADOW_URL}}'], upstream_model: {MODEL}}}\n"
    "rollouts:\n"
    f"  - model: {ROLLOUT}\n"
    f"    variants: [{{model: {MODEL}, weight: 1}}]\n"
)
SHADOW_ON = (
    SHADOW_OFF
    + f"    shadow: {{model: shadow-model, share: 1.0, max_concurrent: {MAX_CONCURRENT}}}\n"
)


def goals_of(results: Rounds, connections: int) -> dict[str, Any]:
    """The goal, judged on paired rounds (round i of ``shadow_on`` against round i of
    ``shadow_off``, run back to back), then the median over rounds."""
    single, many = results[1], results[connections]
    added_p50 = _paired_median(single, lambda on, off: on.e2e.p50 - off.e2e.p50)
    added_p99 = _paired_median(single, lambda on, off: on.e2e.p99 - off.e2e.p99)
    rps_ratio = _paired_median(many, lambda on, off: on.rps / off.rps)
    off_p50s = [r.e2e.p50 for r in single["shadow_off"]]
    noise = max(max(off_p50s) - min(off_p50s), NOISE_FLOOR_MS)
    return {
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
        "rps_ratio": rps_ratio,
        "off_p50_noise_ms": noise,
        "off_p50_median_ms": statistics.median(off_p50s),
        "p50_goal_met": added_p50 <= noise,
    }


def _paired_median(
    runs: dict[str, list[RunResult]], figure: Callable[[RunResult, RunResult], float]
) -> float:
    return statistics.median(
        figure(on, off) for on, off in zip(runs["shadow_on"], runs["shadow_off"], strict=True)
    )


def start_shadow_engine(procs: Processes, pinned: bool) -> str:
    """The shadow model's engine: a stub of its own, as a shadow is another engine in
    production (sharing the primary's stub, every copy would queue the primaries behind
    it there). On CPU 1 with the load generator and the primary's stub."""
    port = free_port()
    argv = [sys.executable, "-m", "engines.stub", "--port", str(port), "--model", MODEL]
    stub = procs.start("shadow_stub", argv, SIDE_CPU if pinned else None)
    url = f"http://127.0.0.1:{port}"
    procs.wait_healthy("shadow_stub", stub, f"{url}/health", 30.0)
    return url


def main(argv: list[str] | None = None) -> int:
    run = begin("shadow_overhead", argv, "a rollout's primaries with its shadow on and off")
    args, body = run.args, chat_body(ROLLOUT, temperature=0)
    with Processes(run.log_dir) as procs:
        shadow_url = start_shadow_engine(procs, run.pinned)
        gateways = {
            name: template.replace("${SHADOW_URL}", shadow_url)
            for name, template in (("shadow_off", SHADOW_OFF), ("shadow_on", SHADOW_ON))
        }
        _, urls = start_stack(procs, run.log_dir, run.pinned, gateways)
        path = "/v1/chat/completions"
        targets = [Target(name, urls[name] + path, body) for name in gateways]
        results = measure_rounds(
            targets, [1, args.connections], args.rounds, args.duration, args.warmup
        )
    goals = goals_of(results, args.connections)
    finish(
        run,
        results,
        goals,
        f"shadow on adds {goals['added_p50_ms']:+.3f} ms at p50 and "
        f"{goals['added_p99_ms']:+.3f} ms at p99 to the primaries (1 connection, median of "
        f"paired rounds; goal: within shadow off's own p50 spread, "
        f"{goals['off_p50_noise_ms']:.3f} ms): {'PASS' if goals['p50_goal_met'] else 'FAIL'}\n"
        f"{args.connections} connections: shadow on serves {goals['rps_ratio']:.1%} of shadow "
        "off's req/s (the copies load the same engine and gateway CPU; reported, no goal)",
    )
    return 0 if goals["p50_goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
