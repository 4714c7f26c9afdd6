"""The cost of one routing decision, per policy, for a pool of N engines.

    .venv/bin/python -m benchmarks.routing_cost --engines 16

Times ``policy.choose`` on a fresh snapshot (what the gateway does per request;
the snapshot itself is built from the live pool, timed as "snapshot"). Goal
(issue #6): <= 20 µs per decision for 16 engines.
"""

from __future__ import annotations

import argparse
import time

from gateway.pool.engine_pool import EnginePool
from gateway.routing.policies import LeastOutstanding, PrefixAffinity, RoundRobin, RoutingPolicy


def per_call_us(fn: object, calls: int) -> float:
    assert callable(fn)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.routing_cost", description=__doc__)
    parser.add_argument("--engines", type=int, default=16)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args(argv)
    urls = [f"http://10.0.0.{i}:8000" for i in range(args.engines)]
    pool = EnginePool({"m": urls})
    for i, url in enumerate(urls):
        for _ in range(i % 5):
            pool.acquire(url)
    views = pool.snapshot("m")
    policies: dict[str, RoutingPolicy] = {
        "least_outstanding": LeastOutstanding(),
        "round_robin": RoundRobin(),
        "prefix_affinity": PrefixAffinity(max_imbalance=8),
    }
    key = b"p:You are a helpful assistant. " * 8
    print(f"{args.engines} engines, {args.calls:,} calls each (µs per call)")
    print(f"  snapshot            {per_call_us(lambda: pool.snapshot('m'), args.calls):6.2f}")
    for name, policy in policies.items():

        def decide(policy: RoutingPolicy = policy) -> None:
            policy.choose(views, key)

        print(f"  {name:<19} {per_call_us(decide, args.calls):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
