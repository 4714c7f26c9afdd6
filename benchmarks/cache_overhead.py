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

import urllib.request
from typing import Any

import orjson

from benchmarks.procs import Processes
from benchmarks.variants import (
    MODEL,
    Rounds,
    Target,
    begin,
    finish,
    measure_rounds,
    median,
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
    run = begin("cache_overhead", argv, "cache hits against the direct and uncached paths")
    args, path = run.args, "/v1/chat/completions"
    with Processes(run.log_dir) as procs:
        stub_url, urls = start_stack(procs, run.log_dir, run.pinned, {"cached": CACHED})
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
    finish(
        run,
        results,
        goals,
        f"cache hit adds {goals['hit_added_p50_ms']:+.3f} ms at p50 (goal <= 0.5: "
        f"{'PASS' if goals['p50_goal_met'] else 'FAIL'}) and {goals['hit_added_p99_ms']:+.3f} ms "
        f"at p99 (goal <= 1.5: {'PASS' if goals['p99_goal_met'] else 'FAIL'}) over the direct "
        f"stub round trip at 1 connection\n{args.connections} connections: "
        f"{goals['hit_rps']:,.0f} hits/s (goal >= 3,000: "
        f"{'PASS' if goals['rps_goal_met'] else 'FAIL'}); "
        f"uncached {goals['uncached_rps']:,.0f} req/s",
    )
    met = goals["p50_goal_met"] and goals["p99_goal_met"] and goals["rps_goal_met"]
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
