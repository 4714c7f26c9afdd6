"""What auth + rate limiting cost: the plain proxy against the same proxy with limits on.

One invocation starts a zero-delay stub engine, a redis-server, and two
gateways pointed at the same stub: ``plain`` (auth off, no limits) and
``limited`` (auth on; one key with requests/min, tokens/min and concurrency
limits high enough never to refuse, counted in Redis on loopback). Both gateways
run on CPU 0, one measured at a time; the stub, Redis and the load generator
share CPU 1. Then, for 1 connection and for ``--connections`` connections, it
runs the same non-streaming load straight at the stub, through ``plain`` and
through ``limited``, in ``--rounds`` alternating rounds and reports the medians
of the rounds.

Goals (issue #4): limited adds ≤ 0.3 ms at p50 over plain at 1 connection, and
serves ≥ 85% of plain's requests/s at 64 connections.

Run: ``python -m benchmarks.ratelimit_overhead --duration 8 --rounds 4``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import chat_body
from benchmarks.procs import Processes, pin_self
from benchmarks.report import machine_info, write_json
from benchmarks.variants import (
    MODEL,
    SIDE_CPU,
    Rounds,
    Target,
    measure_rounds,
    median,
    rounds_json,
    rounds_table,
    start_stack,
)

KEY = "sk-bench-0123456789abcdef"
HUGE = 1_000_000_000
PLAIN = (
    "server: {log_level: warning}\n"
    f"models:\n  - {{name: {MODEL}, endpoints: ['${{STUB_URL}}']}}\n"
)
LIMITED = (
    PLAIN
    + "redis: {url: '${REDIS_URL}'}\n"
    + "auth:\n  enabled: true\n  keys:\n"
    + f"    - {{name: bench, key: {KEY}, rpm: {HUGE}, tpm: {HUGE}, max_concurrent: {HUGE}}}\n"
)


def goals_of(results: Rounds, connections: int) -> dict[str, Any]:
    single, many = results[1], results[connections]
    added_p50 = median(single["limited"], "p50") - median(single["plain"], "p50")
    added_p99 = median(single["limited"], "p99") - median(single["plain"], "p99")
    rps_ratio = median(many["limited"], "rps") / median(many["plain"], "rps")
    return {
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
        "rps_ratio": rps_ratio,
        "p50_goal_met": added_p50 <= 0.3,
        "rps_goal_met": rps_ratio >= 0.85,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.ratelimit_overhead")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="excluded seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating plain/limited rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"ratelimit_overhead-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pinned = pin_self(SIDE_CPU)
    body = chat_body(MODEL)
    with Processes(log_dir) as procs:
        stub_url, urls = start_stack(procs, log_dir, pinned, {"plain": PLAIN, "limited": LIMITED})
        path = "/v1/chat/completions"
        targets = [
            Target("direct", stub_url + path, body),
            Target("plain", urls["plain"] + path, body),
            Target("limited", urls["limited"] + path, body, {"Authorization": f"Bearer {KEY}"}),
        ]
        results = measure_rounds(
            targets, [1, args.connections], args.rounds, args.duration, args.warmup,
            once=frozenset({"direct"}),
        )  # fmt: skip
    goals = goals_of(results, args.connections)
    print()
    print(rounds_table(results))
    print(
        f"\nauth + rate limits add {goals['added_p50_ms']:+.3f} ms at p50 and "
        f"{goals['added_p99_ms']:+.3f} ms at p99 (1 connection; goal <= 0.3 ms at p50): "
        f"{'PASS' if goals['p50_goal_met'] else 'FAIL'}\n"
        f"{args.connections} connections: limited serves {goals['rps_ratio']:.1%} of plain's "
        f"req/s (goal >= 85%): {'PASS' if goals['rps_goal_met'] else 'FAIL'}"
    )
    arguments = sys.argv[1:] if argv is None else argv
    data = {
        "command": shlex.join([sys.executable, "-m", "benchmarks.ratelimit_overhead", *arguments]),
        "machine": machine_info(),
        "goals": goals,
        "runs": rounds_json(results),
    }
    path_out = args.out / f"ratelimit_overhead-{stamp}.json"
    write_json(path_out, data)
    print(f"\nwrote {path_out}")
    return 0 if goals["p50_goal_met"] and goals["rps_goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
