"""The gateway-core benchmark: the same load straight at a stub engine and through vgate.

One invocation starts a zero-delay stub engine pinned to CPU 1 and a gateway
pinned to CPU 0 (its config points at the stub), waits for both ``/health``,
then runs, each against the stub directly and then through the gateway:

(a) 1 connection, closed loop, non-streaming chat: the latency the gateway adds;
(b) 64 connections, closed loop, non-streaming chat: requests/s and errors;
(c) 64 concurrent streams with a stub delay: TTFT, inter-chunk gaps, lost chunks.

The load generator (:mod:`benchmarks.loadgen`) runs in this process, pinned to
CPU 1 beside the stub. It prints a table, checks the goals, and writes JSON
(every figure, the machine, the command line) and a PNG of latency CDFs into
``--out``. Every process it started is stopped on exit, Ctrl-C included.

``--sweep`` (and ``--full``, which also turns on auth, Redis rate limits and a
cache lookup + store per request) replaces (a)-(c) with paired rounds at several
concurrency levels, the streams scenario, the memory holding 1,000 streams and,
with ``--gateway-workers 2``, the scaling to two workers: :mod:`benchmarks.full_mode`.

Run: ``python -m benchmarks.gateway_overhead --duration 10`` (or ``--full``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import full_mode, pyspy
from benchmarks.clients import CLIENTS
from benchmarks.loadgen import LoadSpec, chat_body, run_blocking
from benchmarks.measure import RunResult
from benchmarks.overhead_report import Pair, evaluate_goals, render, write_outputs
from benchmarks.procs import (
    Processes,
    busy_between,
    cpu_busy,
    cpu_ticks,
    free_port,
    group_cpu_seconds,
    pin_self,
)
from benchmarks.sampling import own_cpu_seconds
from benchmarks.sweep_args import add_sweep_arguments, sweep_problem

GATEWAY_CPU = 0
STUB_CPU = 1  # the stub and the load generator share it
MODEL = "stub-model"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    concurrency: int
    stream: bool
    stub: dict[str, float] | None = None


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    stream_stub = {
        "tokens": args.stream_tokens,
        "ttft_ms": args.stream_ttft_ms,
        "itl_ms": args.stream_itl_ms,
    }
    return [
        Scenario("a", "1 connection, closed loop, non-streaming chat", 1, False),
        Scenario(
            "b",
            f"{args.connections} connections, closed loop, non-streaming chat",
            args.connections,
            False,
        ),
        Scenario(
            "c",
            f"{args.connections} concurrent streams (stub ttft "
            f"{args.stream_ttft_ms:g} ms, itl {args.stream_itl_ms:g} ms, "
            f"{args.stream_tokens} tokens)",
            args.connections,
            True,
            stream_stub,
        ),
    ]


def gateway_yaml(args: argparse.Namespace, stub_url: str) -> str:
    """The gateway config: ``--gateway-config`` with ``${STUB_URL}`` filled in, or a minimal one."""
    if args.gateway_config is not None:
        return Path(args.gateway_config).read_text().replace("${STUB_URL}", stub_url)
    return (
        f"server: {{workers: {args.gateway_workers}, log_level: warning}}\n"
        f'models:\n  - name: {MODEL}\n    endpoints: ["{stub_url}"]\n'
    )


def _measure(
    spec: LoadSpec, label: str, pgids: dict[str, int]
) -> tuple[RunResult, dict[str, float]]:
    """One load run, with the CPU share each process group used during it."""
    before = {name: group_cpu_seconds(pgid) for name, pgid in pgids.items()}
    before["loadgen"] = own_cpu_seconds()
    ticks = cpu_ticks()
    started = time.perf_counter()
    result = run_blocking(spec, label)
    wall = time.perf_counter() - started
    machine = sum(busy_between(ticks, cpu_ticks()).values())
    after = {name: group_cpu_seconds(pgid) for name, pgid in pgids.items()}
    after["loadgen"] = own_cpu_seconds()
    shares = {name: (after[name] - before[name]) / wall for name in after}
    shares["other"] = max(0.0, machine - sum(shares.values()))  # work that is not ours
    return result, shares


def run_scenarios(
    args: argparse.Namespace, urls: dict[str, str], pgids: dict[str, int]
) -> dict[str, Pair]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    pairs: dict[str, Pair] = {}
    for sc in scenarios(args):
        body = chat_body(MODEL, stream=sc.stream, stub=sc.stub)
        runs: dict[str, tuple[RunResult, dict[str, float]]] = {}
        for target in ("direct", "gateway"):
            spec = LoadSpec(
                url=urls[target],
                body=body,
                stream=sc.stream,
                mode="closed",
                concurrency=sc.concurrency,
                duration_s=args.duration,
                warmup_s=args.warmup,
                grace_s=10.0,
                client=args.client,
                headers=headers,
            )
            print(f"  ({sc.key}) {target:<7} {sc.title} ...", flush=True)
            runs[target] = _measure(spec, f"{target}", pgids)
        pairs[sc.key] = Pair(
            sc.key,
            sc.title,
            runs["direct"][0],
            runs["gateway"][0],
            runs["direct"][1],
            runs["gateway"][1],
        )
    return pairs


def profile_gateway(
    args: argparse.Namespace, procs: Processes, url: str, gateway_pid: int, out: Path
) -> str:
    """An extra, unscored 64-connection run through the gateway with py-spy attached."""
    exe = pyspy.py_spy()
    if exe is None:
        return "--profile: py-spy not found (pip install py-spy into the venv)"
    seconds = max(1.0, args.duration)
    spy = procs.start("py-spy", pyspy.record_argv(exe, gateway_pid, seconds, out), STUB_CPU)
    spec = LoadSpec(
        url=url, body=chat_body(MODEL), concurrency=args.connections, duration_s=seconds,
        warmup_s=0.5, client=args.client,
    )  # fmt: skip
    print(f"  (profile) gateway {args.connections} connections with py-spy attached ...")
    run_blocking(spec, "profiled")
    spy.wait(timeout=seconds + 30)
    if spy.returncode != 0 or not out.exists():
        return f"--profile: py-spy failed:\n{procs.log_tail('py-spy')}"
    return f"{pyspy.describe(out)}\n(collapsed stacks: {out}; speedscope.app opens it)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks.gateway_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="excluded seconds per run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--gateway-workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64, help="for scenarios b and c")
    parser.add_argument("--stream-tokens", type=int, default=32)
    parser.add_argument("--stream-ttft-ms", type=float, default=20.0)
    parser.add_argument("--stream-itl-ms", type=float, default=10.0)
    parser.add_argument("--client", choices=CLIENTS, default="raw", help="load generator client")
    parser.add_argument("--gateway-config", help="YAML template; ${STUB_URL} is replaced")
    parser.add_argument("--api-key", help="sent as a Bearer token to both targets")
    parser.add_argument(
        "--profile", action="store_true", help="then profile the gateway under load with py-spy"
    )
    add_sweep_arguments(parser)
    return parser


@dataclass
class Session:
    """What one benchmark invocation produced."""

    pairs: dict[str, Pair]
    config: str
    profile: str | None


def run_all(args: argparse.Namespace, log_dir: Path, stamp: str, pinned: bool) -> Session:
    """Start the stub and the gateway, run every scenario, stop them (whatever happens)."""
    python = sys.executable
    with Processes(log_dir) as procs:
        stub_port, gateway_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        stub_argv = [python, "-m", "engines.stub", "--port", str(stub_port), "--model", MODEL]
        stub = procs.start("stub", stub_argv, STUB_CPU if pinned else None)
        config = log_dir / "gateway.yaml"
        config.write_text(gateway_yaml(args, stub_url))
        gateway_argv = [python, "-m", "gateway", "serve", "--config", str(config),
                        "--port", str(gateway_port)]  # fmt: skip
        gateway = procs.start("gateway", gateway_argv, GATEWAY_CPU if pinned else None)
        procs.wait_healthy("stub", stub, f"{stub_url}/health", 30.0)
        procs.wait_healthy("gateway", gateway, f"http://127.0.0.1:{gateway_port}/health", 60.0)
        print(
            f"stub (pid {stub.pid}) on CPU 1, gateway (pid {gateway.pid}, "
            f"{args.gateway_workers} worker(s)) on CPU 0; {args.warmup:g} s warm-up + "
            f"{args.duration:g} s per run",
            flush=True,
        )
        urls = {
            "direct": f"{stub_url}/v1/chat/completions",
            "gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
        }
        pairs = run_scenarios(args, urls, {"gateway": gateway.pid, "stub": stub.pid})
        profile = None
        if args.profile:
            stacks = args.out / f"gateway_overhead-{stamp}-pyspy.txt"
            profile = profile_gateway(args, procs, urls["gateway"], gateway.pid, stacks)
    return Session(pairs, config.read_text(), profile)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = sweep_problem(args)
    if problem is not None:
        print(f"benchmarks.gateway_overhead: {problem}", file=sys.stderr)
        return 2
    arguments = sys.argv[1:] if argv is None else argv
    argv_used = [sys.executable, "-m", "benchmarks.gateway_overhead", *arguments]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"gateway_overhead-{stamp}-logs"
    busy = cpu_busy()
    if any(share > 0.15 for share in busy.values()):
        shares = ", ".join(f"{cpu} {share:.0%}" for cpu, share in busy.items())
        print(f"WARNING: the machine is busy before the benchmark ({shares}); "
              "the figures will be skewed")  # fmt: skip
    pinned = pin_self(STUB_CPU)
    where = "NOT pinned (no CPU 1)"
    if pinned:
        where = f"pinned to CPU 1 beside the {args.upstream} upstream"
    if args.loadgen == "wrk":
        print(f"load generator: wrk (non-streaming runs), {where}; streams: the "
              f"{args.client} client, in this process")  # fmt: skip
    else:
        print(f"load generator: {args.client} client, in this process, {where}")
    if args.sweep or args.full:
        basics = {"command": shlex.join(argv_used), "argv": argv_used, "started": stamp,
                  "cpu_busy_before": busy, "client": args.client, "logs": str(log_dir)}  # fmt: skip
        try:
            return full_mode.main_sweep(args, basics, log_dir, pinned)
        except KeyboardInterrupt:
            print("\ninterrupted: every process started was stopped", file=sys.stderr)
            return 130
    try:
        session = run_all(args, log_dir, stamp, pinned)
    except KeyboardInterrupt:
        print("\ninterrupted: the stub and the gateway were stopped", file=sys.stderr)
        return 130
    pairs, goals = session.pairs, evaluate_goals(session.pairs)
    print()
    print(render(pairs, goals, client=args.client))
    meta: dict[str, Any] = {
        "command": shlex.join(argv_used),
        "argv": argv_used,
        "started": stamp,
        "pinning": {
            "gateway_cpu": GATEWAY_CPU,
            "stub_cpu": STUB_CPU,
            "loadgen_cpu": STUB_CPU,
            "pinned": pinned,
        },
        "cpu_busy_before": busy,
        "gateway_workers": args.gateway_workers,
        "client": args.client,
        "gateway_config": session.config,
        "logs": str(log_dir),
        "profile": session.profile,
    }
    json_path, png_path = write_outputs(args.out, f"gateway_overhead-{stamp}", meta, pairs, goals)
    if session.profile is not None:
        print(f"\n{session.profile}")
    print(f"\nwrote {json_path}\nwrote {png_path}")
    return 0 if all(g.passed for g in goals if g.tier == "gate") else 1


if __name__ == "__main__":
    raise SystemExit(main())
