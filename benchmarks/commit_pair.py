"""The same gateway load against two commits of vgate, in paired rounds: what a change
did to the overhead, measured in one run so that the VM's drift cancels.

``python -m benchmarks.commit_pair BEFORE_TREE AFTER_TREE [--mode full|plain]`` takes
two checkouts (e.g. ``git worktree add /tmp/before <commit>``) and starts, with this
interpreter (each gateway: ``--before-python``/``--after-python``, to compare two
interpreters on one tree), a zero-delay stub and a redis-server on CPU 1 and one gateway from each
tree on CPU 0. Each round loads one gateway, then the other (the order reversed every
other round), at each of ``--levels`` connections: non-streaming chat, a prompt unique
to each request and temperature 0. ``full`` turns on auth, Redis rate limits (far too
high to refuse) and the cache (a lookup and a store per request); ``plain`` has none.
``--loadgen wrk --upstream bare`` is issue #16's harness (wrk and the zero-delay upstream
on CPU 1); ``--before-env``/``--after-env`` set a side's environment
(``--before-env VGATE_NATIVE=0`` with both trees ``.``: source against compiled).

Printed per level: each side's median requests/s, p50 and CPU µs per request (of its
own process), the median of the per-round after/before ratios of requests/s, the
median paired p50 difference, and the spread of the "before" side's requests/s (how
far this machine moved between rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.clients import UNIQUE
from benchmarks.full_mode import FULL, KEY, MODEL, PLAIN, SIDE_CPU
from benchmarks.loadgen import LoadSpec, chat_body, run_blocking
from benchmarks.procs import Processes, free_port, group_cpu_seconds
from benchmarks.wrk import run_wrk

GATEWAY_CPU = 0


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    cpu_us: float


def _start_gateway(
    procs: Processes, name: str, tree: Path, python: str, config: Path, env: list[str]
) -> tuple[int, str]:
    port = free_port()
    argv = ["env", "-C", str(tree), *env, python, "-m", "gateway", "serve",
            "--config", str(config), "--port", str(port)]  # fmt: skip
    proc = procs.start(name, argv, GATEWAY_CPU)
    url = f"http://127.0.0.1:{port}"
    procs.wait_healthy(name, proc, f"{url}/health", 60.0)
    return proc.pid, url


def _measure(url: str, pgid: int, conns: int, args: argparse.Namespace, body: bytes) -> Run:
    headers = {"Authorization": f"Bearer {KEY}"} if args.mode == "full" else {}
    spec = LoadSpec(url=f"{url}/v1/chat/completions", body=body, stream=False,
                    concurrency=conns, duration_s=args.duration, warmup_s=args.warmup,
                    grace_s=10.0, client="raw", headers=headers)  # fmt: skip
    before = group_cpu_seconds(pgid)
    result = run_wrk(spec, url, SIDE_CPU) if args.loadgen == "wrk" else run_blocking(spec, url)
    cpu = group_cpu_seconds(pgid) - before
    answered = result.ok + result.error_count + result.warmup_or_late
    if result.error_count:
        raise SystemExit(f"{url}: {result.errors}")
    return Run(result.rps, result.e2e.p50, cpu / max(1, answered) * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--mode", choices=("full", "plain"), default="full")
    parser.add_argument("--levels", default="1,64")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--logs", type=Path, default=Path("benchmarks/results/commit_pair-logs"))
    parser.add_argument("--before-python", default=sys.executable,
                        help="interpreter of the before side (default: this one)")  # fmt: skip
    parser.add_argument("--after-python", default=sys.executable,
                        help="interpreter of the after side: two venvs of one tree compare "
                             "interpreters")  # fmt: skip
    parser.add_argument("--before-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the before side's gateway (repeatable): "
                             "--before-env VGATE_NATIVE=0 runs one tree from source")  # fmt: skip
    parser.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--loadgen", choices=("python", "wrk"), default="python",
                        help="wrk (pinned to CPU 1) for issue #16's harness")  # fmt: skip
    parser.add_argument("--upstream", choices=("stub", "bare"), default="stub",
                        help="bare: benchmarks.bare_upstream, the zero-delay upstream")  # fmt: skip
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    body = chat_body(MODEL, prompt=f"Say hello to request {UNIQUE.decode()}.", temperature=0)
    with Processes(args.logs) as procs:
        stub_port, redis_port = free_port(), free_port()
        upstream = "benchmarks.bare_upstream" if args.upstream == "bare" else "engines.stub"
        stub = procs.start("stub", [sys.executable, "-m", upstream, "--port",
                                    str(stub_port), "--model", MODEL], SIDE_CPU)  # fmt: skip
        procs.start("redis", ["redis-server", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no"], SIDE_CPU)  # fmt: skip
        procs.wait_healthy("stub", stub, f"http://127.0.0.1:{stub_port}/health", 30.0)
        template = FULL if args.mode == "full" else PLAIN
        config = args.logs / "gateway.yaml"
        text = template.replace("${STUB_URL}", f"http://127.0.0.1:{stub_port}")
        config.write_text(text.replace("${REDIS_URL}", f"redis://127.0.0.1:{redis_port}/0"))
        trees = (("before", args.before, args.before_python, args.before_env),
                 ("after", args.after, args.after_python, args.after_env))  # fmt: skip
        sides = {name: _start_gateway(procs, name, tree.resolve(), python, config.resolve(), env)
                 for name, tree, python, env in trees}  # fmt: skip
        runs: dict[tuple[str, int], list[Run]] = {(n, c): [] for n in sides for c in levels}
        for index in range(args.rounds):
            for conns in levels:
                order = ["before", "after"] if index % 2 == 0 else ["after", "before"]
                for name in order:
                    pgid, url = sides[name]
                    runs[(name, conns)].append(_measure(url, pgid, conns, args, body))
    for conns in levels:
        a, b = runs[("before", conns)], runs[("after", conns)]
        ratio = statistics.median(y.rps / x.rps for x, y in zip(a, b, strict=True))
        dp50 = statistics.median(y.p50_ms - x.p50_ms for x, y in zip(a, b, strict=True))
        rps_a = [x.rps for x in a]
        spread = (max(rps_a) - min(rps_a)) / statistics.median(rps_a)
        print(f"{args.mode} {conns:>3} conns: before {statistics.median(rps_a):,.0f} req/s, "
              f"p50 {statistics.median(x.p50_ms for x in a):.3f} ms, "
              f"{statistics.median(x.cpu_us for x in a):.0f} µs/req | after "
              f"{statistics.median(x.rps for x in b):,.0f} req/s, "
              f"p50 {statistics.median(x.p50_ms for x in b):.3f} ms, "
              f"{statistics.median(x.cpu_us for x in b):.0f} µs/req | paired after/before "
              f"{ratio:.3f}, p50 {dp50:+.3f} ms; before's spread {spread:.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
