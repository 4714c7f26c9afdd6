"""Instructions per request of a fully-on gateway (auth + Redis limits + cache miss and
store on every request), and what Redis itself spends per request.

The gateway runs :data:`benchmarks.full_mode.FULL` (one key with limits far too high
to refuse, the cache on) and every request carries temperature 0 and a prompt unique
to it (:data:`benchmarks.clients.UNIQUE`), so each one is a cache lookup, a miss, an
admission, an answer from the stub, a store and a settlement. As in
:mod:`benchmarks.ratelimit_instructions`, the gateway runs under Valgrind's callgrind:
``--warmup`` requests, a dump (which zeroes the counters), ``--requests`` requests at
``--connections``, a second dump whose total divided by ``--requests`` is the figure.
The VM's drift cannot move that count; ``callgrind_annotate`` on the kept dump shows
where it goes.

Redis is measured over the same counted window: its process's CPU time (user +
system, so socket reads and writes count), the ``usec`` of ``INFO commandstats``
(command time only), its commands and its socket reads per request (``INFO stats``:
how many writes the gateway's commands arrived in). Under callgrind the gateway is
~50x slower, which changes how many requests share a write; ``--native`` runs the
gateway without Valgrind (the Redis figures at full speed, and the gateway's CPU
seconds per request, noisy on a shared VM).

Run: ``python -m benchmarks.full_instructions --requests 2000`` (needs ``valgrind``
and ``redis-server``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.clients import UNIQUE
from benchmarks.full_mode import FULL, KEY, MODEL, PLAIN
from benchmarks.loadgen import LoadSpec, chat_body, run_blocking
from benchmarks.procs import Processes, free_port, group_cpu_seconds
from benchmarks.pyspy import py_spy
from benchmarks.report import machine_info, write_json

_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)
_TOP_LEVEL = frozenset({"evalsha", "eval", "get", "set", "hgetall"})
"""Commands the gateway sends itself: their time includes that of the commands the
rate-limit script runs (counted again under their own names)."""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (``/proc/PID/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def syscalls(pid: int) -> tuple[int, int]:
    """Read-type and write-type system calls of one process so far (``/proc/PID/io``):
    on loopback each socket write also pays for the delivery, so they count."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"]), int(fields["syscw"])


class RedisMeter:
    """Redis's own work over a window: CPU seconds, command time, commands, reads."""

    def __init__(self, url: str, pid: int) -> None:
        self._client = redis.Redis.from_url(url)
        self._pid = pid
        self._cpu = 0.0

    def start(self) -> None:
        self._client.config_resetstat()
        self._cpu = process_cpu_seconds(self._pid)

    def stop(self, requests: int) -> dict[str, Any]:
        cpu = process_cpu_seconds(self._pid) - self._cpu
        commands = self._client.info("commandstats")
        stats = self._client.info("stats")
        per_command = {
            name.removeprefix("cmdstat_"): {
                "calls_per_request": value["calls"] / requests,
                "usec_per_call": value["usec_per_call"],
            }
            for name, value in commands.items()
            if name not in ("cmdstat_config", "cmdstat_info")
        }
        usec = sum(
            value["usec"]
            for name, value in commands.items()
            if name.removeprefix("cmdstat_") in _TOP_LEVEL
        )
        return {
            "cpu_us_per_request": cpu * 1e6 / requests,
            "command_us_per_request": usec / requests,  # scripts include their calls
            "reads_per_request": stats.get("total_reads_processed", 0) / requests,
            "writes_per_request": stats.get("total_writes_processed", 0) / requests,
            "commands": per_command,
        }


def full_config(stub_url: str, redis_url: str) -> str:
    """The FULL config, key refresh slowed to once a minute (not billed to the window)
    and Redis's deadline at a minute: under callgrind the gateway reads replies ~50x
    later than at speed, and with the default 0.25 s it would find Redis "down" and
    measure the local fallback and cache bypasses instead."""
    text = FULL.replace("auth:\n", "auth:\n  refresh_interval_s: 60\n")
    text = text.replace(
        "redis: {url: '${REDIS_URL}'}", "redis: {url: '${REDIS_URL}', timeout_s: 60}"
    )
    return text.replace("${STUB_URL}", stub_url).replace("${REDIS_URL}", redis_url)


def measure(
    procs: Processes,
    log_dir: Path,
    name: str,
    config: str,
    meter: RedisMeter | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Start the gateway (under callgrind unless ``--native``), load it, count."""
    path = log_dir / f"{name}.yaml"
    path.write_text(config)
    port = free_port()
    out = log_dir / f"{name}.callgrind"
    gateway = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    argv = gateway if args.native else [*valgrind, *gateway]
    proc = procs.start(name, argv, None)
    procs.wait_healthy(name, proc, f"http://127.0.0.1:{port}/health", 600.0)
    body = chat_body(MODEL, prompt=f"Say hello to request {UNIQUE.decode()}.", temperature=0)

    def load(requests: int) -> None:
        spec = LoadSpec(
            url=f"http://127.0.0.1:{port}/v1/chat/completions", body=body,
            concurrency=args.connections, duration_s=3600.0, warmup_s=0.0,
            max_requests=requests, headers={"Authorization": f"Bearer {KEY}"},
        )  # fmt: skip
        result = run_blocking(spec, name)
        if result.error_count or result.ok != requests:
            raise RuntimeError(f"{result.ok} ok, {result.error_count} errors")

    def dump() -> None:
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True)
        time.sleep(1.0)

    load(args.warmup)
    if not args.native:
        dump()
    gateway_cpu = group_cpu_seconds(proc.pid)
    reads, writes = syscalls(proc.pid)
    if meter is not None:
        meter.start()
    spy = None
    if args.native and args.pyspy:
        out_file = str(log_dir / "pyspy.txt")
        record = [py_spy() or "py-spy", "record", "--pid", str(proc.pid), "--rate", "250",
                  "--nonblocking", "--format", "raw", "--output", out_file]  # fmt: skip
        spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let it attach
    load(args.requests)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    figures: dict[str, Any] = {"redis": meter.stop(args.requests) if meter else None}
    figures["gateway_cpu_us_per_request"] = (
        (group_cpu_seconds(proc.pid) - gateway_cpu) * 1e6 / args.requests
    )
    reads_after, writes_after = syscalls(proc.pid)
    figures["gateway_read_syscalls_per_request"] = (reads_after - reads) / args.requests
    figures["gateway_write_syscalls_per_request"] = (writes_after - writes) / args.requests
    if not args.native:
        dump()
        dump_path = Path(f"{out}.{proc.pid}.2")
        match = _TOTALS.search(dump_path.read_text())
        if match is None:
            raise RuntimeError(f"no totals in {dump_path}")
        figures["instructions_per_request"] = int(match.group(1)) / args.requests
        figures["callgrind_dump"] = str(dump_path)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.full_instructions")
    parser.add_argument("--requests", type=int, default=2000, help="counted requests")
    parser.add_argument("--warmup", type=int, default=300, help="requests before counting")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--native", action="store_true", help="no Valgrind: Redis at speed")
    parser.add_argument(
        "--pyspy", action="store_true", help="with --native: py-spy the counted window"
    )
    parser.add_argument(
        "--plain", action="store_true", help="also count the plain proxy (no auth, limits, cache)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if not args.native and shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = args.out / f"full_instructions-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with Processes(log_dir) as procs:
        stub_port, redis_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}"
        stub_argv = [sys.executable, "-m", "engines.stub", "--port", str(stub_port)]
        stub = procs.start("stub", [*stub_argv, "--model", MODEL], None)
        server = shutil.which("redis-server") or "redis-server"
        redis_argv = [server, "--port", str(redis_port), "--save", "", "--appendonly", "no"]
        redis_proc = procs.start("redis", redis_argv, None)
        procs.wait_healthy("stub", stub, f"{stub_url}/health", 30.0)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        meter = RedisMeter(redis_url, redis_proc.pid)
        config = full_config(stub_url, redis_url)
        figures = measure(procs, log_dir, "full", config, meter, args)
        if args.plain:
            plain = PLAIN.replace("${STUB_URL}", stub_url)
            figures["plain"] = measure(procs, log_dir, "plain", plain, None, args)
    rd = figures["redis"]
    gets = rd["commands"].get("get", {}).get("calls_per_request", 0.0)
    if gets < 0.99 or "unreachable" in (log_dir / "full.log").read_text():
        print(f"the gateway did not use Redis on every request ({gets:.2f} GET per request; "
              f"see {log_dir / 'full.log'}): no figure", file=sys.stderr)  # fmt: skip
        return 1
    if "instructions_per_request" in figures:
        print(f"gateway: {figures['instructions_per_request']:,.0f} instructions per request "
              f"(dump: {figures['callgrind_dump']})")  # fmt: skip
        if args.plain:
            plain_count = figures["plain"]["instructions_per_request"]
            added = figures["instructions_per_request"] - plain_count
            print(f"plain proxy: {plain_count:,.0f} instructions per request; auth + limits + "
                  f"cache add {added:,.0f}")  # fmt: skip
    else:
        print(f"gateway: {figures['gateway_cpu_us_per_request']:.0f} us CPU per request")
    reads, writes = (figures[f"gateway_{k}_syscalls_per_request"] for k in ("read", "write"))
    print(f"gateway: {reads:.2f} read and {writes:.2f} write system calls per request")
    print(f"redis: {rd['cpu_us_per_request']:.1f} us CPU per request, "
          f"{rd['command_us_per_request']:.1f} us in commands, "
          f"{rd['reads_per_request']:.2f} reads per request")  # fmt: skip
    for name, command in sorted(rd["commands"].items()):
        print(f"  {name}: {command['calls_per_request']:.3f} per request, "
              f"{command['usec_per_call']:.2f} us per call")  # fmt: skip
    out = args.out / f"full_instructions-{stamp}.json"
    command_line = [sys.executable, "-m", "benchmarks.full_instructions", *(argv or sys.argv[1:])]
    write_json(out, {"command": shlex.join(command_line), "machine": machine_info(), **figures})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
