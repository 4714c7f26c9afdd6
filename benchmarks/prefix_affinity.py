"""Prefix affinity versus round robin on two real vLLM CPU engines, in the same run.

Starts ``vgate serve`` with two managed vLLM engines of the embedded default
model (prefix caching on, a small KV cache) behind a ``round_robin`` gateway, and
a second gateway with ``prefix_affinity`` in front of the same two engines. The
workload is many conversations that share long prefixes: ``--prefixes`` long
system prompts (about 1,400 tokens each), each asked ``--passes`` short
questions, the prefixes visited in the same order every pass, two requests in
flight. The number of prefixes is odd, so that round robin does not send each
prefix to the same engine every pass by accident (with 24, it did: both
policies then scored the same 62% hit rate). Together the prefixes need more KV
cache than one engine has, but half of them fit: affinity sends each prefix to
one engine, where it stays cached; round robin makes both engines hold all of
them, so they evict each other's.

Each policy runs on its own fresh set of prefixes (nothing carried over), in
the order round robin, affinity, affinity, round robin; figures are per policy
over its two phases. Reported: vLLM's prefix-cache hit rate (hits / queries,
from the engines' ``/metrics``, both engines summed) and TTFT p50/p95 measured
by streaming through the gateway. Goals (issue #6): affinity's hit rate ≥ 1.8x
round robin's and a lower TTFT p50.

    .venv/bin/python -m benchmarks.prefix_affinity --prefixes 25 --passes 3
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shlex
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.procs import Processes, free_port
from benchmarks.report import machine_info, table, write_json
from engines.stats import EngineStats

MODEL = "smollm2-135m"
WORDS = tuple(
    [
        "amber",
        "basalt",
        "cedar",
        "delta",
        "ember",
        "fjord",
        "granite",
        "harbor",
        "indigo",
        "juniper",
        "kestrel",
        "lagoon",
        "meadow",
        "nimbus",
        "orchid",
        "pebble",
        "quartz",
        "raven",
        "sierra",
        "tundra",
        "umber",
        "valley",
        "willow",
        "yarrow",
        "zephyr",
        "acorn",
        "breeze",
        "canyon",
        "drift",
        "estuary",
        "fern",
        "glacier",
        "heather",
        "iris",
    ]
)


def managed_yaml(log_dir: Path, kv_gib: int, engine_key: str) -> str:
    """The round-robin gateway, which launches both engines: they demand ``engine_key``
    (a managed engine always demands a key; one of ours, so that the affinity gateway,
    which reaches them as external engines, can send it too)."""
    return (
        f"engines: {{log_dir: {log_dir}}}\n"
        "upstream: {health_interval_s: 2, metrics_interval_s: 1}\n"
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    api_key: '{engine_key}'\n"
        "    routing: {policy: round_robin}\n"
        "    engine: {source: default, dtype: float32, max_model_len: 2048, replicas: 2,\n"
        f"             enable_prefix_caching: true, env: {{VLLM_CPU_KVCACHE_SPACE: '{kv_gib}'}},\n"
        "             health: {startup_timeout_s: 1200, probe_interval_s: 600}}\n"
    )


def affinity_yaml(engines: list[str], engine_key: str) -> str:
    urls = ", ".join(f"'{u}'" for u in engines)
    return (
        "upstream: {metrics_interval_s: 1}\n"
        f"models:\n  - name: {MODEL}\n    endpoints: [{urls}]\n"
        f"    api_key: '{engine_key}'\n"
        "    routing: {policy: prefix_affinity, max_imbalance: 4}\n"
    )


def engines_of(gateway: str, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{gateway}/ready", timeout=2) as response:
                engines = orjson.loads(response.read())["engines"].get(MODEL, {})
                healthy = sorted(url for url, ok in engines.items() if ok)
                if len(healthy) == 2:
                    return healthy
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"two engines not ready after {timeout_s:.0f} s")


def prefix(phase: int, index: int, words: int) -> str:
    rng = random.Random(phase * 1000 + index)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"Conversation {phase}-{index}. Reference notes: {text}."


def prefix_stats(engines: list[str]) -> tuple[float, float]:
    """(queries, hits) summed over the engines."""
    queries = hits = 0.0
    for url in engines:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            stats = EngineStats.from_text(response.read().decode())
        queries += stats.prefix_cache_queries
        hits += stats.prefix_cache_hits
    return queries, hits


async def run_phase(gateway: str, phase: int, args: argparse.Namespace) -> tuple[list[float], int]:
    """Every prefix, ``passes`` times; returns TTFTs (ms) and errors."""
    requests = [(index, turn) for turn in range(args.passes) for index in range(args.prefixes)]
    ttfts: list[float] = []
    errors = 0
    queue = iter(requests)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        for index, turn in queue:
            body = {
                "model": MODEL,
                "stream": True,
                "temperature": 0,
                "max_tokens": 4,
                "messages": [
                    {"role": "system", "content": prefix(phase, index, args.prefix_words)},
                    {"role": "user", "content": f"Question {turn}: name one word from the notes."},
                ],
            }
            started = time.perf_counter()
            first: float | None = None
            async with client.stream("POST", f"{gateway}/v1/chat/completions", json=body) as reply:
                if reply.status_code != 200:
                    errors += 1
                    continue
                async for line in reply.aiter_lines():
                    if first is None and line.startswith("data: {") and '"content"' in line:
                        first = time.perf_counter()
            if first is None:
                errors += 1
            else:
                ttfts.append((first - started) * 1000)

    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    return ttfts, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.prefix_affinity")
    parser.add_argument("--prefixes", type=int, default=25, help="odd: round robin alternates")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--prefix-words", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE per engine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = (args.out / f"prefix_affinity-{stamp}-logs").resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    results: dict[str, dict[str, Any]] = {
        p: {"ttft_ms": [], "queries": 0.0, "hits": 0.0, "errors": 0}
        for p in ("round_robin", "prefix_affinity")
    }
    with Processes(log_dir) as procs:
        gateways: dict[str, str] = {}
        managed = log_dir / "round_robin.yaml"
        engine_key = secrets.token_hex(16)
        managed.write_text(managed_yaml(log_dir, args.kv_gib, engine_key))
        port, admin = free_port(), free_port()
        argv = [python, "-m", "gateway", "serve", "--config", str(managed), "--port", str(port),
                "--admin-port", str(admin)]  # fmt: skip
        procs.start("round_robin", argv, None)
        gateways["round_robin"] = f"http://127.0.0.1:{port}"
        print("starting two vLLM engines (a few minutes on a CPU) ...", flush=True)
        engines = engines_of(f"http://127.0.0.1:{admin}", 1500)  # the operator listener
        affinity = log_dir / "prefix_affinity.yaml"
        affinity.write_text(affinity_yaml(engines, engine_key))
        port = free_port()
        argv = [python, "-m", "gateway", "serve", "--config", str(affinity), "--port", str(port)]
        gateway = procs.start("prefix_affinity", argv, None)
        gateways["prefix_affinity"] = f"http://127.0.0.1:{port}"
        procs.wait_healthy("prefix_affinity", gateway, f"{gateways['prefix_affinity']}/health", 60)
        order = ["round_robin", "prefix_affinity", "prefix_affinity", "round_robin"]
        for phase, policy in enumerate(order, start=1):
            print(f"  phase {phase}: {policy} ...", flush=True)
            before = prefix_stats(engines)
            ttfts, errors = asyncio.run(run_phase(gateways[policy], phase, args))
            after = prefix_stats(engines)
            results[policy]["ttft_ms"] += ttfts
            results[policy]["queries"] += after[0] - before[0]
            results[policy]["hits"] += after[1] - before[1]
            results[policy]["errors"] += errors
    rows, rates = [], {}
    for policy, r in results.items():
        rates[policy] = r["hits"] / r["queries"] if r["queries"] else 0.0
        rows.append([policy, f"{rates[policy]:.1%}", f"{statistics.median(r['ttft_ms']):.0f}",
                     f"{percentile(r['ttft_ms'], 0.95):.0f}", str(len(r["ttft_ms"])),
                     str(r["errors"])])  # fmt: skip
    ratio = (
        rates["prefix_affinity"] / rates["round_robin"] if rates["round_robin"] else float("inf")
    )
    faster = statistics.median(results["prefix_affinity"]["ttft_ms"]) < statistics.median(
        results["round_robin"]["ttft_ms"]
    )
    print()
    print(table(["policy", "prefix-cache hit rate", "TTFT p50 ms", "TTFT p95 ms", "requests",
                 "errors"], rows))  # fmt: skip
    print(
        f"\naffinity hit rate = {ratio:.2f}x round robin's (goal >= 1.8x): "
        f"{'PASS' if ratio >= 1.8 else 'FAIL'}; TTFT p50 lower: {'PASS' if faster else 'FAIL'}"
    )
    arguments = sys.argv[1:] if argv is None else argv
    out = args.out / f"prefix_affinity-{stamp}.json"
    write_json(out, {
        "command": shlex.join([python, "-m", "benchmarks.prefix_affinity", *arguments]),
        "machine": machine_info(),
        "results": {p: {k: v for k, v in r.items()} for p, r in results.items()},
        "hit_rate_ratio": ratio,
    })  # fmt: skip
    print(f"wrote {out}")
    return 0 if ratio >= 1.8 and faster else 1


if __name__ == "__main__":
    raise SystemExit(main())
