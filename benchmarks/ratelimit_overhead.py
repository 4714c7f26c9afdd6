"""What auth + rate limiting cost: the plain proxy against the same proxy with limits on.

One invocation starts a zero-delay stub engine, a redis-server, and two
gateways pointed at the same stub: ``plain`` (auth off, no limits) and
``limited`` (auth on; one key with requests/min, tokens/min and concurrency
limits high enough never to refuse, counted in Redis on loopback). Both gateways
run on CPU 0, one measured at a time; the stub, Redis and the load generator
share CPU 1. Then, for 1 connection and for ``--connections`` connections, it
runs the same non-streaming load straight at the stub, through ``plain`` and
through ``limited``, in ``--rounds`` alternating rounds (plain, limited,
limited, plain, ...) and reports the medians of the rounds.

Goals (issue #4): limited adds ≤ 0.3 ms at p50 over plain at 1 connection, and
serves ≥ 85% of plain's requests/s at 64 connections.

Run: ``python -m benchmarks.ratelimit_overhead --duration 10 --rounds 2``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadSpec, chat_body, run_blocking
from benchmarks.measure import RunResult
from benchmarks.procs import Processes, free_port, pin_self
from benchmarks.report import machine_info, ms, table, write_json

GATEWAY_CPU = 0
SIDE_CPU = 1
MODEL = "stub-model"
KEY = "sk-bench-0123456789abcdef"
HUGE = 1_000_000_000


def configs(stub_url: str, redis_url: str) -> dict[str, str]:
    base = (
        "server: {log_level: warning}\n"
        f"models:\n  - {{name: {MODEL}, endpoints: ['{stub_url}']}}\n"
    )
    limited = (
        base
        + f"redis: {{url: '{redis_url}'}}\n"
        + "auth:\n  enabled: true\n  keys:\n"
        + f"    - {{name: bench, key: {KEY}, rpm: {HUGE}, tpm: {HUGE}, max_concurrent: {HUGE}}}\n"
    )
    return {"plain": base, "limited": limited}


def start_all(procs: Processes, log_dir: Path, pinned: bool) -> dict[str, str]:
    """The stub, Redis and both gateways; returns the chat URL of each target."""
    python = sys.executable
    side = SIDE_CPU if pinned else None
    stub_port, redis_port = free_port(), free_port()
    stub_url = f"http://127.0.0.1:{stub_port}"
    stub = procs.start(
        "stub", [python, "-m", "engines.stub", "--port", str(stub_port), "--model", MODEL], side
    )
    redis_binary = shutil.which("redis-server") or "redis-server"
    procs.start(
        "redis",
        [redis_binary, "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        side,
    )
    procs.wait_healthy("stub", stub, f"{stub_url}/health", 30.0)
    urls = {"direct": f"{stub_url}/v1/chat/completions"}
    for name, text in configs(stub_url, f"redis://127.0.0.1:{redis_port}/0").items():
        path = log_dir / f"{name}.yaml"
        path.write_text(text)
        port = free_port()
        argv = [python, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
        gateway = procs.start(name, argv, GATEWAY_CPU if pinned else None)
        procs.wait_healthy(name, gateway, f"http://127.0.0.1:{port}/health", 60.0)
        urls[name] = f"http://127.0.0.1:{port}/v1/chat/completions"
    return urls


def measure(
    args: argparse.Namespace, urls: dict[str, str]
) -> dict[int, dict[str, list[RunResult]]]:
    """Every (connections, target) pair, ``rounds`` times, plain and limited alternating."""
    body = chat_body(MODEL)
    results: dict[int, dict[str, list[RunResult]]] = {}
    for connections in (1, args.connections):
        runs: dict[str, list[RunResult]] = {"direct": [], "plain": [], "limited": []}
        for round_index in range(args.rounds):
            order = ["plain", "limited"] if round_index % 2 == 0 else ["limited", "plain"]
            for target in ["direct", *order] if round_index == 0 else order:
                headers = {"Authorization": f"Bearer {KEY}"} if target == "limited" else {}
                spec = LoadSpec(
                    url=urls[target], body=body, concurrency=connections,
                    duration_s=args.duration, warmup_s=args.warmup, headers=headers,
                )  # fmt: skip
                print(f"  {connections:>3} conn  round {round_index + 1}  {target} ...", flush=True)
                runs[target].append(run_blocking(spec, target))
        results[connections] = runs
    return results


def _median(runs: list[RunResult], figure: str) -> float:
    values = {
        "p50": [r.e2e.p50 for r in runs],
        "p95": [r.e2e.p95 for r in runs],
        "p99": [r.e2e.p99 for r in runs],
        "rps": [r.rps for r in runs],
        "errors": [float(r.error_count) for r in runs],
    }[figure]
    return statistics.median(values)


def report(
    results: dict[int, dict[str, list[RunResult]]], connections: int
) -> tuple[str, dict[str, Any]]:
    rows = []
    for conns, runs in results.items():
        for target in ("direct", "plain", "limited"):
            rows.append([
                f"{conns} conn, {target}", ms(_median(runs[target], "p50")),
                ms(_median(runs[target], "p95")), ms(_median(runs[target], "p99")),
                f"{_median(runs[target], 'rps'):,.0f}", f"{_median(runs[target], 'errors'):.0f}",
            ])  # fmt: skip
    single, many = results[1], results[connections]
    added_p50 = _median(single["limited"], "p50") - _median(single["plain"], "p50")
    added_p99 = _median(single["limited"], "p99") - _median(single["plain"], "p99")
    rps_ratio = _median(many["limited"], "rps") / _median(many["plain"], "rps")
    goals = {
        "added_p50_ms": added_p50,
        "added_p99_ms": added_p99,
        "rps_ratio": rps_ratio,
        "p50_goal_met": added_p50 <= 0.3,
        "rps_goal_met": rps_ratio >= 0.85,
    }
    text = "\n".join([
        table(["run (median of rounds)", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors"], rows),
        "",
        f"auth + rate limits add {added_p50:+.3f} ms at p50 and {added_p99:+.3f} ms at p99 "
        f"(1 connection; goal <= 0.3 ms at p50): {'PASS' if goals['p50_goal_met'] else 'FAIL'}",
        f"{connections} connections: limited serves {rps_ratio:.1%} of plain's req/s "
        f"(goal >= 85%): {'PASS' if goals['rps_goal_met'] else 'FAIL'}",
    ])  # fmt: skip
    return text, goals


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
    with Processes(log_dir) as procs:
        urls = start_all(procs, log_dir, pinned)
        print(f"gateways on CPU {GATEWAY_CPU}; stub, redis, load generator on CPU {SIDE_CPU}"
              if pinned else "not pinned (fewer than 2 CPUs)")  # fmt: skip
        results = measure(args, urls)
    text, goals = report(results, args.connections)
    print()
    print(text)
    arguments = sys.argv[1:] if argv is None else argv
    data = {
        "command": shlex.join([sys.executable, "-m", "benchmarks.ratelimit_overhead", *arguments]),
        "machine": machine_info(),
        "goals": goals,
        "runs": {
            str(conns): {t: [r.to_dict() for r in rs] for t, rs in runs.items()}
            for conns, runs in results.items()
        },
    }
    path = args.out / f"ratelimit_overhead-{stamp}.json"
    write_json(path, data)
    print(f"\nwrote {path}")
    return 0 if goals["p50_goal_met"] and goals["rps_goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
