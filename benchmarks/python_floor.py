"""Where the gateway stands between the least a Python proxy can cost and issue #16's goal.

``python -m benchmarks.python_floor`` runs, in paired rounds at 64 connections
(non-streaming chat, a prompt unique to each request, temperature 0), the same load
against four targets:

- ``direct``: the stub engine itself;
- ``floor``: :mod:`benchmarks.floor_proxy`, a proxy that does nothing but relay
  (uvloop + httptools, keep-alive both ways);
- ``floor_redis``: the same relay with one Redis round trip (``INCR``) awaited before
  each request is forwarded: the least a design that asks Redis once per request can
  add (at one connection, ``--connections 1``, the figure issue #16's 0.3 ms is about);
- ``plain``: the gateway without auth, limits or cache;
- ``full``: the gateway with auth, Redis rate limits and the cache (a lookup and a
  store per request), as ``gateway_overhead --full``.

Every proxy runs alone on CPU 0 (one at a time is loaded); the upstream, Redis and the
load generator share CPU 1. ``--upstream bare`` puts :mod:`benchmarks.bare_upstream` in
the stub's place and ``--loadgen wrk`` sends the load with ``wrk`` (:mod:`benchmarks.wrk`)
instead of this process's client, as issue #16 measures; the ``stub`` column is then the
bare upstream's. For each it prints requests/s and CPU microseconds per
request of the proxy's process, and of CPU 1's processes (the load generator and the
stub: when they are busy, CPU 1 bounds the figure, not the proxy). The goal of
6,000 requests/s on one core is 166 µs per request for everything the gateway does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.clients import UNIQUE
from benchmarks.full_mode import FULL, KEY, MODEL, PLAIN, SIDE_CPU, Stack, check_full
from benchmarks.loadgen import chat_body
from benchmarks.procs import Processes, free_port
from benchmarks.report import machine_info, write_json
from benchmarks.sweep import Load, Target, run_rounds, side_of
from benchmarks.sweep_args import add_harness_arguments, wrk_problem

GOAL_RPS = 6000
PATH = "/v1/chat/completions"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    add_harness_arguments(parser)
    args = parser.parse_args(argv)
    problem = wrk_problem(args)
    if problem is not None:
        print(f"benchmarks.python_floor: {problem}", file=sys.stderr)
        return 2
    log_dir = args.out / "python_floor-logs"
    with Processes(log_dir) as procs:
        stack = Stack(procs, log_dir, True, FULL, args.upstream)
        full = stack.gateway("full", 1, 0) + PATH
        plain = stack.gateway("plain", 1, 0, PLAIN) + PATH
        stub_port = stack.stub_url.rsplit(":", 1)[1]
        redis_port = stack.redis_url.rsplit(":", 1)[1].split("/")[0]
        floor = _start_floor(procs, stack, "floor", stub_port, None)
        floor_redis = _start_floor(procs, stack, "floor_redis", stub_port, redis_port)
        headers = {"Authorization": f"Bearer {KEY}"}
        check_full(full, headers)
        body = chat_body(MODEL, prompt=f"Say hello to request {UNIQUE.decode()}.", temperature=0)
        load = Load(body, False, headers, args.duration, args.warmup, "raw", args.loadgen, SIDE_CPU)
        targets = [
            Target("direct", stack.stub_url + PATH),
            Target("floor", floor + PATH, stack.groups["floor"]),
            Target("floor_redis", floor_redis + PATH, stack.groups["floor_redis"]),
            Target("plain", plain, stack.groups["plain"]),
            Target("full", full, stack.groups["full"]),
        ]
        rounds = run_rounds(targets, [args.connections], args.rounds, load, stack.groups)
    runs = rounds[args.connections]
    budget = 1e6 / GOAL_RPS
    print(f"\n{args.loadgen} load generator, {args.upstream} upstream; "
          f"{args.connections} connections, {args.rounds} paired rounds of "
          f"{args.warmup:g} + {args.duration:g} s; goal {GOAL_RPS:,} req/s = "
          f"{budget:.0f} µs/request on one core")  # fmt: skip
    direct_p50 = side_of("direct", runs["direct"]).p50_ms
    print(f"{'target':<12} {'req/s':>8} {'spread':>7} {'added p50 ms':>13} {'proxy µs/req':>13} "
          f"{'loadgen µs/req':>15} {'stub µs/req':>12} {'redis µs/req':>13}")  # fmt: skip
    summary = {}
    for target in targets:
        side = side_of(target.name, runs[target.name])
        cpu = side.cpu_us_per_request
        own = cpu.get(target.name, float("nan"))
        added = side.p50_ms - direct_p50
        print(f"{target.name:<12} {side.rps:>8,.0f} {side.rps_spread:>7.1%} "
              f"{added:>+13.3f} {own:>13.0f} "
              f"{cpu.get('loadgen', 0):>15.0f} {cpu.get('stub', 0):>12.0f} "
              f"{cpu.get('redis', 0):>13.0f}")  # fmt: skip
        summary[target.name] = {"rps": side.rps, "rps_spread": side.rps_spread,
                                "p50_ms": side.p50_ms, "added_p50_ms": added,
                                "cpu_us_per_request": cpu}  # fmt: skip
    out = args.out / "python_floor.json"
    write_json(out, {"machine": machine_info(), "args": vars(args) | {"out": str(args.out)},
                     "targets": summary, "side_cpu": SIDE_CPU})  # fmt: skip
    print(f"wrote {out}")
    return 0


def _start_floor(
    procs: Processes, stack: Stack, name: str, stub_port: str, redis_port: str | None
) -> str:
    """Start a floor proxy on CPU 0 (``redis_port``: with one Redis round trip per
    request) and return its base URL once it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.floor_proxy", "--port", str(port),
            "--upstream-port", stub_port]  # fmt: skip
    if redis_port is not None:
        argv += ["--redis-port", redis_port]
    proc = procs.start(name, argv, 0)
    stack.groups[name] = proc.pid
    url = f"http://127.0.0.1:{port}"
    procs.wait_healthy(name, proc, f"{url}/health", 30.0)  # any answer is a 200
    return url


if __name__ == "__main__":
    raise SystemExit(main())
