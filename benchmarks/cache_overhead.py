"""What a cache hit costs: hits against the stub round trip and the uncached path.

One invocation starts a zero-delay stub engine and a redis-server on CPU 1 and
one gateway with the cache on (Redis on loopback, auth off) on CPU 0, then runs
the same deterministic chat request (temperature 0):

* ``direct``: straight at the stub;
* ``uncached``: through the gateway with ``Cache-Control: no-store`` (the proxy
  path: routed to the stub every time);
* ``hit``: through the gateway, answered from the cache (primed first).

at 1 connection and at ``--connections`` connections, in alternating rounds,
and reports the medians of the rounds.

Goals (issue #5): a hit adds ≤ 0.5 ms at p50 and ≤ 1.5 ms at p99 over the direct
stub round trip at 1 connection; ≥ 3,000 hits/s on one gateway worker.

Run: ``python -m benchmarks.cache_overhead --duration 8 --rounds 2``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

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

CACHED = (
    "server: {log_level: warning}\n"
    f"models:\n  - {{name: {MODEL}, endpoints: ['${{STUB_URL}}']}}\n"
    "redis: {url: '${REDIS_URL}'}\n"
    "cache: {enabled: true}\n"
)
BODY = orjson.dumps(
    {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": "Say hello."}]}
)


def prime(url: str) -> str:
    """Send the request once so that the cache holds it; returns X-Cache of a second try."""
    for _ in range(2):
        request = urllib.request.Request(
            url, BODY, {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            state = str(response.headers.get("x-cache", ""))
    return state


def goals_of(results: Rounds, connections: int) -> dict[str, Any]:
    single, many = results[1], results[connections]
    added_p50 = median(single["hit"], "p50") - median(single["direct"], "p50")
    added_p99 = median(single["hit"], "p99") - median(single["direct"], "p99")
    hit_rps = median(many["hit"], "rps")
    return {
        "hit_added_p50_ms": added_p50,
        "hit_added_p99_ms": added_p99,
        "hit_rps": hit_rps,
        "uncached_rps": median(many["uncached"], "rps"),
        "uncached_p50_ms": median(single["uncached"], "p50"),
        "p50_goal_met": added_p50 <= 0.5,
        "p99_goal_met": added_p99 <= 1.5,
        "rps_goal_met": hit_rps >= 3000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.cache_overhead")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="excluded seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"cache_overhead-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pinned = pin_self(SIDE_CPU)
    path = "/v1/chat/completions"
    with Processes(log_dir) as procs:
        stub_url, urls = start_stack(procs, log_dir, pinned, {"cached": CACHED})
        gateway = urls["cached"] + path
        state = prime(gateway)
        if state != "HIT":
            raise SystemExit(f"the cache did not serve the primed request (X-Cache: {state!r})")
        targets = [
            Target("direct", stub_url + path, BODY),
            Target("uncached", gateway, BODY, {"Cache-Control": "no-store"}),
            Target("hit", gateway, BODY),
        ]
        results = measure_rounds(
            targets, [1, args.connections], args.rounds, args.duration, args.warmup
        )
    goals = goals_of(results, args.connections)
    print()
    print(rounds_table(results))
    print(
        f"\ncache hit adds {goals['hit_added_p50_ms']:+.3f} ms at p50 (goal <= 0.5: "
        f"{'PASS' if goals['p50_goal_met'] else 'FAIL'}) and {goals['hit_added_p99_ms']:+.3f} ms "
        f"at p99 (goal <= 1.5: {'PASS' if goals['p99_goal_met'] else 'FAIL'}) over the direct "
        f"stub round trip at 1 connection\n{args.connections} connections: "
        f"{goals['hit_rps']:,.0f} hits/s (goal >= 3,000: "
        f"{'PASS' if goals['rps_goal_met'] else 'FAIL'}); "
        f"uncached {goals['uncached_rps']:,.0f} req/s"
    )
    arguments = sys.argv[1:] if argv is None else argv
    data = {
        "command": shlex.join([sys.executable, "-m", "benchmarks.cache_overhead", *arguments]),
        "machine": machine_info(),
        "goals": goals,
        "runs": rounds_json(results),
    }
    out = args.out / f"cache_overhead-{stamp}.json"
    write_json(out, data)
    print(f"\nwrote {out}")
    met = goals["p50_goal_met"] and goals["p99_goal_met"] and goals["rps_goal_met"]
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
