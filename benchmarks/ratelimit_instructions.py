"""Instructions per request, plain proxy against auth + rate limits: a count the VM's speed
cannot move.

Requests per second on this shared 2-core VM drift by ±15% within minutes, which
is as large as the effect ``benchmarks.ratelimit_overhead`` looks for. This script
counts instead: each gateway of that benchmark (same configs) runs under Valgrind's
callgrind, takes ``--warmup`` requests, then callgrind's counters are dumped
(which zeroes them), ``--requests`` requests go through at ``--connections``, and
the second dump's total is divided by ``--requests``. At saturation a gateway's
requests/s is its CPU over its cost per request, so ``plain / limited`` here
predicts the requests/s ratio of a drift-free machine.

What is counted: user-space instructions of the gateway process, every one in the
window (its background tasks included: key refresh is slowed to once a minute so
that it does not bill the slower-running limited gateway for time). Not counted:
kernel time (socket calls), Redis's own work, cache effects.

Needs ``valgrind`` (Debian package ``valgrind``). Run:
``python -m benchmarks.ratelimit_instructions --requests 2000``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.loadgen import LoadSpec, chat_body, run_blocking
from benchmarks.procs import Processes, free_port
from benchmarks.ratelimit_overhead import KEY, LIMITED, PLAIN
from benchmarks.report import machine_info, write_json
from benchmarks.variants import MODEL

_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def count(
    procs: Processes, log_dir: Path, name: str, config: str, args: argparse.Namespace
) -> float:
    """Instructions per request of one gateway config."""
    path = log_dir / f"{name}.yaml"
    path.write_text(config)
    port = free_port()
    out = log_dir / f"{name}.callgrind"
    gateway = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    proc = procs.start(name, [*valgrind, *gateway], None)
    procs.wait_healthy(name, proc, f"http://127.0.0.1:{port}/health", 600.0)
    headers = {"Authorization": f"Bearer {KEY}"} if name == "limited" else {}

    def load(requests: int, connections: int) -> None:
        spec = LoadSpec(
            url=f"http://127.0.0.1:{port}/v1/chat/completions", body=chat_body(MODEL),
            concurrency=connections, duration_s=3600.0, warmup_s=0.0, max_requests=requests,
            headers=headers,
        )  # fmt: skip
        result = run_blocking(spec, name)
        if result.error_count or result.ok != requests:
            raise RuntimeError(f"{name}: {result.ok} ok, {result.error_count} errors")

    load(args.warmup, args.connections)
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    time.sleep(1.0)
    load(args.requests, args.connections)
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    time.sleep(1.0)
    dump = Path(f"{out}.{proc.pid}.2").read_text()
    match = _TOTALS.search(dump)
    if match is None:
        raise RuntimeError(f"no totals in {out}.{proc.pid}.2")
    requests: int = args.requests
    return int(match.group(1)) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.ratelimit_instructions")
    parser.add_argument("--requests", type=int, default=2000, help="counted requests")
    parser.add_argument("--warmup", type=int, default=300, help="requests before counting")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"ratelimit_instructions-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with Processes(log_dir) as procs:
        stub_port, redis_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        stub_argv = [sys.executable, "-m", "engines.stub", "--port", str(stub_port)]
        stub = procs.start("stub", [*stub_argv, "--model", MODEL], None)
        redis = shutil.which("redis-server") or "redis-server"
        procs.start("redis", [redis, "--port", str(redis_port), "--save", ""], None)
        procs.wait_healthy("stub", stub, f"{stub_url}/health", 30.0)
        configs = {
            "plain": PLAIN,
            # Redis's deadline at 60 s: under callgrind the slowed gateway would miss the
            # default 0.25 s, find Redis "down" and count the in-memory fallback instead.
            "limited": LIMITED.replace("auth:\n", "auth:\n  refresh_interval_s: 60\n").replace(
                "redis: {url: '${REDIS_URL}'}", "redis: {url: '${REDIS_URL}', timeout_s: 60}"
            ),
        }
        per_request = {}
        for name, template in configs.items():
            text = template.replace("${STUB_URL}", stub_url)
            text = text.replace("${REDIS_URL}", f"redis://127.0.0.1:{redis_port}/0")
            per_request[name] = count(procs, log_dir, name, text, args)
            print(f"{name}: {per_request[name]:,.0f} instructions per request", flush=True)
    ratio = per_request["plain"] / per_request["limited"]
    print(
        f"\nauth + rate limits add {per_request['limited'] - per_request['plain']:,.0f} "
        f"instructions per request (+{per_request['limited'] / per_request['plain'] - 1:.1%}); "
        f"predicted requests/s at saturation: {ratio:.1%} of plain's (goal >= 85%): "
        f"{'PASS' if ratio >= 0.85 else 'FAIL'}"
    )
    out = args.out / f"ratelimit_instructions-{stamp}.json"
    data = {
        "command": shlex.join(
            [sys.executable, "-m", "benchmarks.ratelimit_instructions", *(argv or sys.argv[1:])]
        ),
        "machine": machine_info(),
        "instructions_per_request": per_request,
        "predicted_rps_ratio": ratio,
    }
    write_json(out, data)
    print(f"wrote {out}")
    return 0 if ratio >= 0.85 else 1


if __name__ == "__main__":
    raise SystemExit(main())
