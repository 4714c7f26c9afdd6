"""Shared machinery of the "same load, several gateway variants" benchmarks.

A stub engine and a redis-server on the side CPU, any number of gateways on the
gateway CPU (one measured at a time), and runs repeated in alternating rounds
so that drift in the machine's speed spreads evenly over the variants; figures
are medians of the rounds.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadgen import LoadSpec, run_blocking
from benchmarks.measure import RunResult
from benchmarks.procs import Processes, free_port, pin_self
from benchmarks.report import machine_info, ms, table, write_json

GATEWAY_CPU = 0
SIDE_CPU = 1
MODEL = "stub-model"


@dataclass(frozen=True)
class Target:
    """One thing to load: a URL, the body to send and the headers to send it with."""

    name: str
    url: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def start_stack(
    procs: Processes, log_dir: Path, pinned: bool, gateways: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """Start the stub, Redis and one gateway per config (``${STUB_URL}`` and
    ``${REDIS_URL}`` are filled in); returns the stub's base URL and each gateway's."""
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
    urls: dict[str, str] = {}
    for name, template in gateways.items():
        text = template.replace("${STUB_URL}", stub_url)
        text = text.replace("${REDIS_URL}", f"redis://127.0.0.1:{redis_port}/0")
        path = log_dir / f"{name}.yaml"
        path.write_text(text)
        port = free_port()
        argv = [python, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
        gateway = procs.start(name, argv, GATEWAY_CPU if pinned else None)
        procs.wait_healthy(name, gateway, f"http://127.0.0.1:{port}/health", 60.0)
        urls[name] = f"http://127.0.0.1:{port}"
    return stub_url, urls


Rounds = dict[int, dict[str, list[RunResult]]]


def measure_rounds(
    targets: list[Target],
    connections: list[int],
    rounds: int,
    duration_s: float,
    warmup_s: float,
    once: frozenset[str] = frozenset(),
) -> Rounds:
    """Every target at every connection count, ``rounds`` times, the order reversed
    every other round; targets in ``once`` run in the first round only."""
    results: Rounds = {}
    for conns in connections:
        runs: dict[str, list[RunResult]] = {t.name: [] for t in targets}
        for index in range(rounds):
            ordered = targets if index % 2 == 0 else list(reversed(targets))
            for target in ordered:
                if target.name in once and index:
                    continue
                spec = LoadSpec(
                    url=target.url, body=target.body, concurrency=conns,
                    duration_s=duration_s, warmup_s=warmup_s, headers=target.headers,
                )  # fmt: skip
                print(f"  {conns:>3} conn  round {index + 1}  {target.name} ...", flush=True)
                runs[target.name].append(run_blocking(spec, target.name))
        results[conns] = runs
    return results


def median(runs: list[RunResult], figure: str) -> float:
    values = {
        "p50": [r.e2e.p50 for r in runs],
        "p95": [r.e2e.p95 for r in runs],
        "p99": [r.e2e.p99 for r in runs],
        "rps": [r.rps for r in runs],
        "errors": [float(r.error_count) for r in runs],
    }[figure]
    return statistics.median(values)


def rounds_table(results: Rounds) -> str:
    rows = []
    for conns, runs in results.items():
        for name, results_of in runs.items():
            rows.append([
                f"{conns} conn, {name}", ms(median(results_of, "p50")),
                ms(median(results_of, "p95")), ms(median(results_of, "p99")),
                f"{median(results_of, 'rps'):,.0f}", f"{median(results_of, 'errors'):.0f}",
            ])  # fmt: skip
    return table(["run (median of rounds)", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors"], rows)


def rounds_json(results: Rounds) -> dict[str, dict[str, list[dict[str, object]]]]:
    return {
        str(conns): {name: [r.to_dict() for r in rs] for name, rs in runs.items()}
        for conns, runs in results.items()
    }


@dataclass(frozen=True)
class Invocation:
    """One run of a variants benchmark: its arguments and where its files go."""

    name: str
    args: argparse.Namespace
    argv: list[str]
    stamp: str
    log_dir: Path
    pinned: bool


def begin(name: str, argv: list[str] | None, description: str) -> Invocation:
    """Parse the shared flags, make the log folder, pin this process to the side CPU."""
    parser = argparse.ArgumentParser(prog=f"benchmarks.{name}", description=description)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="excluded seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    arguments = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(arguments)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"{name}-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    return Invocation(name, args, arguments, stamp, log_dir, pin_self(SIDE_CPU))


def finish(run: Invocation, results: Rounds, goals: dict[str, Any], verdict: str) -> None:
    """Print the table and the verdict; write every figure as JSON next to the logs."""
    print()
    print(rounds_table(results))
    print(f"\n{verdict}")
    data = {
        "command": shlex.join([sys.executable, "-m", f"benchmarks.{run.name}", *run.argv]),
        "machine": machine_info(),
        "goals": goals,
        "runs": rounds_json(results),
    }
    out = run.args.out / f"{run.name}-{run.stamp}.json"
    write_json(out, data)
    print(f"\nwrote {out}")
