"""Real vLLM through the gateway versus direct, in the same run.

Starts ``vgate serve`` with one managed vLLM engine serving the embedded
default model (the gateway launches it, as ``vgate up`` does), waits until it is
ready, then for each concurrency (1, 16, 64 by default) runs the same streaming
load first directly against the engine and then through the gateway, and
reports tokens/s and the through-gateway ratio, TTFT p50/p99 and the added TTFT,
and the inter-chunk gap p99. Goals (issue #3): throughput >= 0.98x direct and
added TTFT p50 <= 2 ms.

    .venv/bin/python -m benchmarks.real_engine --duration 30 --warmup 5

On a 2-core machine vLLM's CPU backend would spin OpenMP threads on both cores
and the gateway's work would wait for a time slice, so by default the engine's
threads are bound to CPU 0 (``VLLM_CPU_OMP_THREADS_BIND``) and the gateway and
this load generator are pinned to CPU 1 (``--engine-cpus all`` turns that off).
Runs go in ABBA order (direct, gateway, gateway, direct) at each concurrency so
drift hits both sides alike; each side's figures are the mean of its two runs.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson

from benchmarks.loadgen import LoadSpec, chat_body, run_blocking
from benchmarks.measure import RunResult
from benchmarks.procs import Processes, free_port, pin_self
from benchmarks.report import describe_run, machine_info, plot_cdfs, table, write_json

MODEL = "smollm2-135m"
PROMPT = "Write a short story about a lighthouse keeper and a storm."


def gateway_yaml(log_dir: Path, engine_cpus: str, engine_key: str) -> str:
    """The gateway's config: one managed engine that demands ``engine_key`` (a managed
    engine always demands a key; one of ours, so that the direct runs can send it too)."""
    env = "" if engine_cpus == "all" else f"env: {{VLLM_CPU_OMP_THREADS_BIND: '{engine_cpus}'}},"
    return (
        f"engines: {{log_dir: {log_dir}}}\n"
        "upstream: {health_interval_s: 2}\n"
        "models:\n"
        f"  - name: {MODEL}\n"
        f"    api_key: '{engine_key}'\n"
        f"    engine: {{source: default, dtype: float32, max_model_len: 2048, {env}\n"
        "             health: {startup_timeout_s: 1200, probe_interval_s: 600}}\n"
    )


def engine_url(gateway: str, timeout_s: float) -> str:
    """The engine's URL once the gateway reports it healthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{gateway}/ready", timeout=2) as response:
                engines = orjson.loads(response.read())["engines"].get(MODEL, {})
                healthy = [url for url, ok in engines.items() if ok]
                if healthy:
                    return str(healthy[0])
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"engine not ready after {timeout_s:.0f} s")


def load_spec(
    url: str, concurrency: int, args: argparse.Namespace, engine_key: str | None = None
) -> LoadSpec:
    """One run's load; ``engine_key`` for a run straight at the engine (the gateway
    needs none: auth is off, and it sends the engine its key itself)."""
    body = chat_body(MODEL, stream=True, prompt=PROMPT, max_tokens=args.max_tokens)
    headers = {"Authorization": f"Bearer {engine_key}"} if engine_key else {}
    return LoadSpec(
        url=f"{url}/v1/chat/completions",
        body=body,
        stream=True,
        concurrency=concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        grace_s=120,
        client="aiohttp",
        headers=headers,
    )


def load(spec: LoadSpec, label: str) -> RunResult:
    result = run_blocking(spec, label)
    print(describe_run(result), flush=True)
    return result


def mean(runs: list[RunResult], figure: Callable[[RunResult], float]) -> float:
    return sum(figure(r) for r in runs) / len(runs)


def row(c: int, direct: list[RunResult], gateway: list[RunResult]) -> list[str]:
    """Means over each side's runs; latencies are already in ms."""
    d_tps, g_tps = mean(direct, lambda r: r.tokens_per_s), mean(gateway, lambda r: r.tokens_per_s)
    d_ttft, g_ttft = mean(direct, lambda r: r.ttft.p50), mean(gateway, lambda r: r.ttft.p50)
    return [
        str(c),
        f"{d_tps:,.1f}",
        f"{g_tps:,.1f}",
        f"{g_tps / d_tps:.3f}x" if d_tps else "-",
        f"{d_ttft:.1f}",
        f"{g_ttft:.1f}",
        f"{g_ttft - d_ttft:+.2f}",
        f"{mean(direct, lambda r: r.ttft.p99):.1f} / {mean(gateway, lambda r: r.ttft.p99):.1f}",
        f"{mean(direct, lambda r: r.itl.p99):.1f} / {mean(gateway, lambda r: r.itl.p99):.1f}",
        f"{sum(r.error_count for r in direct)} / {sum(r.error_count for r in gateway)}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.real_engine", description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="excluded seconds per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--engine-cpus", default="0", help="VLLM_CPU_OMP_THREADS_BIND for the engine, or 'all'"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = (args.out / f"real_engine-{stamp}-logs").resolve()
    results: dict[int, tuple[list[RunResult], list[RunResult]]] = {}
    if args.engine_cpus != "all":
        pin_self(1)  # the gateway inherits nothing from us; it is pinned below
    with Processes(log_dir) as procs:
        port = free_port()
        config = log_dir / "gateway.yaml"
        log_dir.mkdir(parents=True, exist_ok=True)
        engine_key = secrets.token_hex(16)
        config.write_text(gateway_yaml(log_dir, args.engine_cpus, engine_key))
        admin = free_port()
        argv_gateway = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
                        "--port", str(port), "--admin-port", str(admin)]  # fmt: skip
        gateway_cpu = None if args.engine_cpus == "all" else 1
        gateway_proc = procs.start("gateway", argv_gateway, gateway_cpu)
        gateway = f"http://127.0.0.1:{port}"
        procs.wait_healthy("gateway", gateway_proc, f"{gateway}/health", 60)
        print("waiting for the vLLM engine (minutes on a CPU) ...", flush=True)
        engine = engine_url(f"http://127.0.0.1:{admin}", 1500)  # the operator listener
        for c in args.concurrency:
            print(f"\n== concurrency {c}", flush=True)
            straight, via = load_spec(engine, c, args, engine_key), load_spec(gateway, c, args)
            direct = [load(straight, f"direct c={c} #1")]
            through = [load(via, f"gateway c={c} #1")]
            through.append(load(via, f"gateway c={c} #2"))
            direct.append(load(straight, f"direct c={c} #2"))
            results[c] = (direct, through)

    headers = ["conc", "direct tok/s", "gateway tok/s", "ratio", "TTFT p50 direct",
               "TTFT p50 gw", "added ms", "TTFT p99 d/g", "gap p99 d/g", "errors d/g"]  # fmt: skip
    print("\n" + table(headers, [row(c, d, g) for c, (d, g) in results.items()]))
    print("(ms unless noted; streaming chat, max_tokens", args.max_tokens, ")")
    data = {
        "command": " ".join(sys.argv),
        "machine": machine_info(),
        "runs": {
            str(c): {"direct": [r.to_dict() for r in d], "gateway": [r.to_dict() for r in g]}
            for c, (d, g) in results.items()
        },
    }
    write_json(args.out / f"real_engine-{stamp}.json", data)
    panels = [
        (f"TTFT, concurrency {c}", [d[0], g[0]], "ttft", False) for c, (d, g) in results.items()
    ]
    plot_cdfs(args.out / f"real_engine-{stamp}.png", panels)
    print(f"wrote {args.out}/real_engine-{stamp}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
