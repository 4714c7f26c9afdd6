"""What large bodies cost the gateway: a key over its rate sending 2 MB bodies, and
what every other request of the worker feels meanwhile (issue #13).

One invocation starts a stub engine and a redis-server on CPU 1 and one gateway
with auth and Redis-counted limits on CPU 0, then, each for ``--duration``
seconds:

* ``idle``: ``GET /health`` at 1 connection, nothing else running;
* ``refused``: one connection of a key already over its ``rpm`` sending 2 MB
  chat bodies back to back: the time from the first byte written to the 429
  read (the body must not be parsed: the key's window is closed);
* ``refused + health``: the same, with ``/health`` measured at the same time;
* ``valid + health``: :data:`SENDERS` connections of an unlimited key sending 2 MB
  valid bodies (4,000 messages; ``Cache-Control: no-store``, answered by the
  stub) while ``/health`` is measured: the gateway validates each body off its
  event loop, so ``/health`` stays fast.

Goals: each 429 in < 5 ms at p99; ``/health`` p99 < 50 ms while such bodies arrive.

Run: ``python -m benchmarks.large_bodies --duration 5``.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.procs import Processes
from benchmarks.report import ms, table
from benchmarks.stats import Summary, summarize
from benchmarks.variants import MODEL, begin, start_stack

OVER_KEY = "sk-bench-over-0123456789"
OPEN_KEY = "sk-bench-open-0123456789"
CONFIG = (
    "server: {log_level: warning}\n"
    f"models:\n  - {{name: {MODEL}, endpoints: ['${{STUB_URL}}']}}\n"
    "redis: {url: '${REDIS_URL}'}\n"
    "auth:\n  enabled: true\n  keys:\n"
    f"    - {{name: over, key: {OVER_KEY}, rpm: 1}}\n"
    f"    - {{name: open, key: {OPEN_KEY}}}\n"
)
PATH = "/v1/chat/completions"
SENDERS = 2
Load = Callable[[http.client.HTTPConnection], int]
"""Sends one request on a connection; returns its status."""


def big_body(messages: int, size: int) -> bytes:
    """A chat body of ``messages`` messages and about ``size`` bytes."""
    text = "x" * max(1, size // messages - 40)
    chat = [{"role": "user", "content": text} for _ in range(messages)]
    return orjson.dumps({"model": MODEL, "messages": chat, "max_tokens": 4})


class Sampler:
    """Repeats one request on a keep-alive connection until stopped; keeps latencies."""

    def __init__(self, port: int, send: Load) -> None:
        self._port = port
        self._send = send
        self.samples: list[float] = []
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=30)
        while not self._stop.is_set():
            started = time.perf_counter()
            status = self._send(connection)
            self.samples.append(time.perf_counter() - started)
            self.statuses[status] = self.statuses.get(status, 0) + 1
        connection.close()


def health(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/health")
    response = connection.getresponse()
    response.read()
    return response.status


def poster(body: bytes, key: str) -> Load:
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {key}",
        "Cache-Control": "no-store",
    }

    def send(connection: http.client.HTTPConnection) -> int:
        connection.request("POST", PATH, body, headers)
        response = connection.getresponse()
        response.read()
        return response.status

    return send


def measure(port: int, duration_s: float, *loads: Load) -> list[Sampler]:
    samplers = [Sampler(port, load).start() for load in loads]
    time.sleep(duration_s)  # the measurement window itself
    for sampler in samplers:
        sampler.stop()
    return samplers


def row(name: str, sampler: Sampler) -> list[str]:
    s: Summary = summarize(sampler.samples)
    return [name, f"{s.count:,}", ms(s.p50), ms(s.p95), ms(s.p99), ms(s.max),
            ", ".join(f"{k}: {v}" for k, v in sorted(sampler.statuses.items()))]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    run = begin("large_bodies", argv, "a key over its rate sending 2 MB bodies; /health meanwhile")
    args = run.args
    refused_body = big_body(20_000, 2_000_000)
    valid_body = big_body(4_000, 2_000_000)
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    with Processes(run.log_dir) as procs:
        _, urls = start_stack(procs, run.log_dir, run.pinned, {"gateway": CONFIG})
        port = int(urls["gateway"].rsplit(":", 1)[1])
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        small = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(2):  # the first is admitted, the second closes the key's window
            status = poster(small, OVER_KEY)(warm)
        if status != 429:
            raise SystemExit(f"the 'over' key was not refused (status {status})")
        scenarios = {
            "idle": (health,),
            "refused": (poster(refused_body, OVER_KEY),),
            "refused + health": (poster(refused_body, OVER_KEY), health),
            "valid + health": (*[poster(valid_body, OPEN_KEY)] * SENDERS, health),
        }
        for name, loads in scenarios.items():
            print(f"  {name} ...", flush=True)
            samplers = measure(port, args.duration, *loads)
            labels = ["2 MB bodies" if load is not health else "/health" for load in loads]
            for label, sampler in zip(labels, samplers, strict=True):
                if label == "2 MB bodies" and sampler is not samplers[0]:
                    continue  # one row for the senders
                rows.append(row(f"{name}: {label}", sampler))
                figures[f"{name}: {label}"] = summarize(sampler.samples).to_dict() | {
                    "statuses": sampler.statuses
                }
    print()
    print(table(["run", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms", "statuses"], rows))
    refused_p99 = figures["refused: 2 MB bodies"]["p99"]
    health_p99 = max(figures["refused + health: /health"]["p99"],
                     figures["valid + health: /health"]["p99"])  # fmt: skip
    goals = {  # summaries are in milliseconds
        "refused_p99_ms": refused_p99,
        "health_p99_ms": health_p99,
        "refused_goal_met": refused_p99 < 5.0,
        "health_goal_met": health_p99 < 50.0,
    }
    print(
        f"\n429 for a key over its rate, 2 MB body: p99 {refused_p99:.2f} ms "
        f"(goal < 5: {'PASS' if goals['refused_goal_met'] else 'FAIL'}); /health p99 under "
        f"large bodies {health_p99:.2f} ms "
        f"(goal < 50: {'PASS' if goals['health_goal_met'] else 'FAIL'})"
    )
    out = args.out / f"large_bodies-{run.stamp}.json"
    data = {"argv": run.argv, "figures": figures, "goals": goals}
    out.write_bytes(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))
    print(f"wrote {out}")
    return 0 if goals["refused_goal_met"] and goals["health_goal_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
