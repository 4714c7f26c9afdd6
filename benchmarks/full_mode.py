"""The sweep mode of :mod:`benchmarks.gateway_overhead` (``--sweep``, and ``--full``).

``--full`` turns on everything a production gateway does per request: auth (one
static key, sent by the load generator), rate limits counted in a real
redis-server (requests/min, tokens/min and concurrency limits far too high to
refuse) and the response cache with a lookup *and* a store on every request
(temperature 0, and a prompt unique to each request, so that every request misses).
Without it the gateway has the plain config (or ``--gateway-config``).

Placement: the gateway (one worker) alone on CPU 0; the upstream, Redis and the load
generator on CPU 1. The upstream is the stub engine (``--upstream stub``, the default) or
:mod:`benchmarks.bare_upstream` (``--upstream bare``); the load generator is
:mod:`benchmarks.loadgen` in this process (``--loadgen python``, the default) or ``wrk``
(``--loadgen wrk``, :mod:`benchmarks.wrk`), which issue #16's figures use. The streams
scenario and the held streams always use the Python load generator: they time every
chunk, which wrk cannot. Then, in paired rounds (:mod:`benchmarks.sweep`): the
concurrency sweep (non-streaming chat at each of ``--levels``), the streams
scenario, the memory holding ``--hold-streams`` streams, and with
``--gateway-workers N`` (N > 1) a second gateway with N workers on CPUs 0-1
against the first at 64 and 256 connections.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.clients import UNIQUE
from benchmarks.loadgen import chat_body
from benchmarks.procs import Processes, free_port
from benchmarks.report import machine_info, write_json
from benchmarks.stream_hold import HoldFigures, hold_body_stub, hold_streams
from benchmarks.sweep import (
    Comparison,
    Load,
    Rounds,
    StreamFigures,
    Target,
    compare,
    run_rounds,
    stream_figures,
)
from benchmarks.sweep_args import UPSTREAMS, loadgen_label
from benchmarks.sweep_report import SweepOutcome, goals, plot_sweep, render

MODEL = "stub-model"
GATEWAY_CPU, SIDE_CPU, BOTH_CPUS = 0, 1, "0,1"
KEY = "sk-bench-0123456789abcdef"
HUGE = 1_000_000_000
SCALING_LEVELS = (64, 256)
BASE = (
    "server: {log_level: warning}\n"
    f'models:\n  - name: {MODEL}\n    endpoints: ["${{STUB_URL}}"]\n'
)
PLAIN = BASE + "responses: {memory_max_bytes: 0}\n"  # no Redis: with workers > 1, required
FULL = (
    BASE
    + "redis: {url: '${REDIS_URL}'}\n"
    + "auth:\n  enabled: true\n  keys:\n"
    + f"    - {{name: bench, key: {KEY}, rpm: {HUGE}, tpm: {HUGE}, max_concurrent: {HUGE}}}\n"
    + "cache: {enabled: true, ttl_s: 120}\n"  # every request stores: keep Redis small
)


def config_template(args: argparse.Namespace) -> str:
    if args.gateway_config is not None:
        return Path(args.gateway_config).read_text()
    return FULL if args.full else PLAIN


def headers_of(args: argparse.Namespace) -> dict[str, str]:
    key = args.api_key or (KEY if args.full else None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def body_of(args: argparse.Namespace, stream: bool, stub: dict[str, float] | None) -> bytes:
    """Full mode: temperature 0 and a prompt unique per request (a cache miss each time)."""
    if not args.full:
        return chat_body(MODEL, stream=stream, stub=stub)
    prompt = f"Say hello to request {UNIQUE.decode()}."
    return chat_body(MODEL, stream=stream, stub=stub, prompt=prompt, temperature=0)


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        url, body, {"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, str(response.headers.get("x-cache", ""))
    except urllib.error.HTTPError as error:
        return error.code, ""


def check_full(url: str, headers: dict[str, str]) -> None:
    """Refuse to measure a "full" gateway that does not do auth and the cache."""
    body = chat_body(MODEL, prompt=f"probe {os.urandom(8).hex()}", temperature=0)
    states = [_post(url, body, headers) for _ in range(2)]
    anonymous, _ = _post(url, body, {})
    if states != [(200, "MISS"), (200, "HIT")] or anonymous != 401:
        raise SystemExit(
            f"--full: the gateway does not look fully on: twice the same request gave "
            f"{states} (want 200 MISS, then 200 HIT), without a key {anonymous} (want 401)"
        )


class Stack:
    """The upstream, Redis (when the config uses it) and the gateways of one invocation.

    ``upstream`` names the engine the gateways point at (:data:`UPSTREAMS`); its process
    group is called ``stub`` in the CPU figures, whichever it is, and it serves
    ``/stub/stats`` either way."""

    def __init__(
        self, procs: Processes, log_dir: Path, pinned: bool, template: str, upstream: str = "stub"
    ) -> None:
        self.procs, self.log_dir, self.pinned, self.template = procs, log_dir, pinned, template
        python = sys.executable
        port = free_port()
        self.stub_url = f"http://127.0.0.1:{port}"
        argv = [python, "-m", UPSTREAMS[upstream], "--port", str(port), "--model", MODEL]
        self.stub = procs.start("stub", argv, self._cpu(SIDE_CPU))
        self.groups: dict[str, int] = {"stub": self.stub.pid}
        self.redis_url = ""
        if "${REDIS_URL}" in template:
            redis_port = free_port()
            self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
            redis_argv = ["redis-server", "--port", str(redis_port), "--save", "",
                          "--appendonly", "no"]  # fmt: skip
            self.groups["redis"] = procs.start("redis", redis_argv, self._cpu(SIDE_CPU)).pid
        procs.wait_healthy("stub", self.stub, f"{self.stub_url}/health", 30.0)
        self.config = template.replace("${STUB_URL}", self.stub_url).replace(
            "${REDIS_URL}", self.redis_url
        )

    def _cpu(self, cpu: int | str) -> int | str | None:
        return cpu if self.pinned else None

    def gateway(self, name: str, workers: int, cpu: int | str, config: str | None = None) -> str:
        """Start a gateway with ``workers`` workers on ``cpu`` (``config``: a template other
        than the stack's, its ``${STUB_URL}`` replaced); its base URL."""
        path = self.log_dir / f"{name}.yaml"
        text = self.config if config is None else config.replace("${STUB_URL}", self.stub_url)
        path.write_text(text)
        port = free_port()
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                "--port", str(port), "--workers", str(workers)]  # fmt: skip
        proc = self.procs.start(name, argv, self._cpu(cpu))
        self.procs.wait_healthy(name, proc, f"http://127.0.0.1:{port}/health", 60.0)
        self.groups[name] = proc.pid
        return f"http://127.0.0.1:{port}"


def raw_rounds(rounds: Rounds) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return {
        str(conns): {name: [s.to_dict() for s in samples] for name, samples in runs.items()}
        for conns, runs in rounds.items()
    }


@dataclass(frozen=True)
class Parts:
    """What every part of the sweep mode needs: the arguments, the stack, the loads."""

    args: argparse.Namespace
    stack: Stack
    direct: Target
    gateway: Target
    headers: dict[str, str]

    def load(self, stream: bool, stub: dict[str, float] | None = None) -> Load:
        """The load of a part; streams always use the Python load generator (wrk cannot
        time chunks)."""
        a = self.args
        body = body_of(a, stream, stub)
        loadgen = "python" if stream else a.loadgen
        cpu = SIDE_CPU if self.stack.pinned else None
        return Load(body, stream, self.headers, a.duration, a.warmup, a.client, loadgen, cpu)

    def sweep(self, raw: dict[str, Any]) -> list[Comparison]:
        """Non-streaming chat at every level, direct and through the gateway."""
        a, pair = self.args, [self.direct, self.gateway]
        rounds = run_rounds(pair, a.levels, a.rounds, self.load(False), self.stack.groups, "sweep ")
        raw["sweep"] = raw_rounds(rounds)
        return [compare(conns, runs, "direct", "gateway") for conns, runs in rounds.items()]

    def streams(self, raw: dict[str, Any]) -> StreamFigures:
        """``--connections`` streams at once, with the stub's TTFT and gaps."""
        a, pair = self.args, [self.direct, self.gateway]
        stub = {"tokens": a.stream_tokens, "ttft_ms": a.stream_ttft_ms, "itl_ms": a.stream_itl_ms}
        load = self.load(True, stub)
        rounds = run_rounds(pair, [a.connections], a.rounds, load, self.stack.groups, "streams ")
        raw["streams"] = raw_rounds(rounds)
        return stream_figures(a.connections, rounds[a.connections])

    def hold(self) -> HoldFigures:
        """The gateway's memory holding ``--hold-streams`` slow streams at once."""
        a, tokens = self.args, 10
        return hold_streams(
            self.gateway.url, body_of(a, True, hold_body_stub(tokens, a.hold_seconds)),
            self.headers, streams=a.hold_streams, tokens=tokens, stream_s=a.hold_seconds,
            gateway_pgid=self.stack.groups["gateway"], stub_url=self.stack.stub_url,
            client=a.client,
        )  # fmt: skip

    def scaling(self, scaled: Target, raw: dict[str, Any]) -> list[Comparison]:
        """The 1-worker gateway against the N-worker one at 64 and 256 connections."""
        targets, load = [self.gateway, scaled], self.load(False)
        rounds = run_rounds(
            targets, SCALING_LEVELS, self.args.rounds, load, self.stack.groups, "scaling "
        )
        raw["scaling"] = raw_rounds(rounds)
        return [compare(conns, runs, "gateway", scaled.name) for conns, runs in rounds.items()]


def run_sweep_mode(
    args: argparse.Namespace, log_dir: Path, pinned: bool
) -> tuple[SweepOutcome, dict[str, Any]]:
    """Start everything, run every part, stop everything; the outcome and its raw runs."""
    path = "/v1/chat/completions"
    headers = headers_of(args)
    raw: dict[str, Any] = {}
    with Processes(log_dir) as procs:
        stack = Stack(procs, log_dir, pinned, config_template(args), args.upstream)
        url = stack.gateway("gateway", 1, GATEWAY_CPU) + path
        gateway = Target("gateway", url, stack.groups["gateway"])
        if args.full:
            check_full(gateway.url, headers)
        scaled = None
        if args.gateway_workers > 1:
            name = f"gateway_{args.gateway_workers}w"
            url = stack.gateway(name, args.gateway_workers, BOTH_CPUS) + path
            scaled = Target(name, url, stack.groups[name])
        print(f"{args.upstream} upstream, {'Redis, ' if stack.redis_url else ''}"
              f"{args.loadgen} load generator on CPU 1; gateway "
              f"(1 worker) on CPU 0{f'; {scaled.name} on CPUs 0-1' if scaled else ''}; "
              f"{args.rounds} paired rounds of {args.warmup:g} + {args.duration:g} s",
              flush=True)  # fmt: skip
        parts = Parts(args, stack, Target("direct", stack.stub_url + path), gateway, headers)
        levels = parts.sweep(raw)
        streams = parts.streams(raw) if args.connections > 0 else None
        hold = parts.hold() if args.hold_streams > 0 else None
        scaling = parts.scaling(scaled, raw) if scaled is not None else []
        raw["gateway_config"] = stack.config
    mode = "full (auth + Redis limits + cache miss/store)" if args.full else "plain"
    return SweepOutcome(mode, levels, streams, hold, scaling, args.gateway_workers), raw


def main_sweep(args: argparse.Namespace, meta: dict[str, Any], log_dir: Path, pinned: bool) -> int:
    """Run the sweep mode, print it, write ``<stem>.json`` and ``<stem>-sweep.png``."""
    outcome, raw = run_sweep_mode(args, log_dir, pinned)
    print()
    print(render(outcome, loadgen_label(args)))
    checked = goals(outcome)
    stem = args.out / f"gateway_overhead-{meta['started']}"
    json_path, png_path = stem.with_suffix(".json"), Path(f"{stem}-sweep.png")
    write_json(
        json_path,
        {
            **meta,
            "mode": outcome.mode,
            "loadgen": args.loadgen,
            "upstream": args.upstream,
            "rounds": args.rounds,
            "machine": machine_info(),
            "sweep": [c.to_dict() for c in outcome.levels],
            "streams": outcome.streams.to_dict() if outcome.streams else None,
            "hold": outcome.hold.to_dict() if outcome.hold else None,
            "scaling": [c.to_dict() for c in outcome.scaling],
            "goals": [asdict(g) for g in checked],
            "runs": raw,
        },
    )
    plot_sweep(png_path, outcome)
    print(f"\nwrote {json_path}\nwrote {png_path}")
    return 0 if all(g.passed for g in checked) else 1
