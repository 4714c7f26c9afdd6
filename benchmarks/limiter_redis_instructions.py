"""Redis's own cost of the rate limiter per request: instructions (callgrind) and CPU.

A redis-server runs under Valgrind's callgrind (or without it: ``--native``) and
this process drives :class:`gateway.backends.redis.limiter.RedisLimiter` the way a
gateway does: ``--connections`` concurrent requests, each admitted (prompt 12 tokens,
4,096 wanted) and then settled to 30 tokens, on one scope with requests/min,
tokens/min and concurrency limits far too high to refuse (the full-mode benchmark's
key). The limiter batches them as it does in the gateway. After ``--warmup``
requests callgrind's counters are dumped (which zeroes them), ``--requests`` more
run, and the second dump's total over ``--requests`` is Redis's instructions per
request: a figure the VM's drift cannot move. Redis's CPU seconds and script time
(``INFO commandstats``) over the same window are printed too.

Run: ``python -m benchmarks.limiter_redis_instructions`` (needs ``valgrind`` and
``redis-server``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
import uvloop

from benchmarks.full_instructions import process_cpu_seconds
from benchmarks.procs import Processes, free_port
from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink
from gateway.ratelimit.limits import Limits, LimitScope

HUGE = 1_000_000_000
SCOPES = (LimitScope("{bench}", Limits(HUGE, HUGE, HUGE), "bench"),)
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


async def drive(url: str, requests: int, connections: int) -> None:
    """``requests`` admissions and settlements, ``connections`` at a time."""
    link = RedisLink(url, timeout_s=60.0, retry_s=0.1)
    limiter = RedisLimiter(link)
    left = requests
    prefix = uuid.uuid4().hex[:8]

    async def one_connection(number: int) -> None:
        nonlocal left
        sent = 0
        while left > 0:
            left -= 1
            sent += 1
            request_id = f"{prefix}-{number}-{sent}"
            decision = await limiter.admit(SCOPES, request_id, 12, 60.0, 4096, 1)
            if not decision.admitted:
                raise RuntimeError(f"refused: {decision}")
            limiter.settle(SCOPES, request_id, 12 + decision.granted, 30, decision.at)
            await asyncio.sleep(0)  # the answer goes out before the next request

    await asyncio.gather(*(one_connection(n) for n in range(connections)))
    await limiter.admit(SCOPES, f"{prefix}-last", 0, 60.0)  # the last settlements ran
    await limiter.close()
    await link.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.limiter_redis_instructions")
    parser.add_argument("--requests", type=int, default=10_000, help="counted requests")
    parser.add_argument("--warmup", type=int, default=10_000, help="requests before counting")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--native", action="store_true", help="Redis without Valgrind")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if not args.native and shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    log_dir = args.out / f"limiter_redis_instructions-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    with Processes(log_dir) as procs:
        port = free_port()
        server = [shutil.which("redis-server") or "redis-server", "--port", str(port),
                  "--save", "", "--appendonly", "no"]  # fmt: skip
        out = log_dir / "redis.callgrind"
        valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
        proc = procs.start("redis", server if args.native else [*valgrind, *server], None)
        url = f"redis://127.0.0.1:{port}/0"
        admin = redis.Redis.from_url(url)
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        uvloop.run(drive(url, args.warmup, args.connections))
        if not args.native:
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True)
        admin.config_resetstat()
        cpu = process_cpu_seconds(proc.pid)
        uvloop.run(drive(url, args.requests, args.connections))
        cpu = process_cpu_seconds(proc.pid) - cpu
        stats = admin.info("commandstats")
        script = stats.get("cmdstat_evalsha", {"usec": 0, "calls": 0})
        inner = {
            name.removeprefix("cmdstat_"): round(value["calls"] / args.requests, 3)
            for name, value in stats.items()
            if name not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_config")
        }
        print(f"redis: {cpu * 1e6 / args.requests:.1f} us CPU per request, "
              f"{script['usec'] / args.requests:.1f} us in the script "
              f"({script['calls']} script calls); calls per request: {inner}")  # fmt: skip
        if not args.native:
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True)
            time.sleep(1.0)
            dump = Path(f"{out}.{proc.pid}.2")
            match = _TOTALS.search(dump.read_text())
            if match is None:
                raise RuntimeError(f"no totals in {dump}")
            print(f"redis: {int(match.group(1)) / args.requests:,.0f} instructions per "
                  f"request (dump: {dump})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
