"""An asyncio load generator for OpenAI-compatible endpoints on loopback.

Two modes, both bounded by time (warm-up + duration, then a grace period for
requests still in flight) and optionally by a request count:

- closed loop: ``concurrency`` workers, each sending its next request as soon
  as the previous one ends; latency counts from the actual send.
- open loop: requests are launched at ``rate`` per second (Poisson or uniform
  arrivals) whether or not earlier ones have finished, over at most
  ``concurrency`` connections. Latency counts from the *scheduled* send time,
  so a slow server (or a late client) cannot hide its queueing: no
  coordinated omission. ``send_lag`` shows how late the client itself was.

Only requests scheduled inside the measured window count; the warm-up's are
dropped, except requests still unanswered at the very end, which count as
``timeout`` errors whenever they were sent. When ``max_requests`` ends a run
early, rates are taken over the part of the window actually used. Open-loop
runs also report ``service`` time (from the actual send): the event loop's
timers have about 1 ms resolution, so ``send_lag`` is typically 0-1 ms.
Streaming responses are timed chunk by chunk (see :mod:`benchmarks.measure`).
Run ``python -m benchmarks.loadgen --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
from dataclasses import asdict, dataclass, field
from time import perf_counter
from typing import Any, Literal

import orjson

from benchmarks.clients import CLIENTS, Client, make_client
from benchmarks.measure import Recorder, RunResult, result_of

Mode = Literal["closed", "open"]
Arrivals = Literal["poisson", "uniform"]


@dataclass(frozen=True)
class LoadSpec:
    """One run: where to send which body, how, and for how long."""

    url: str
    body: bytes = field(repr=False)
    stream: bool = False
    mode: Mode = "closed"
    concurrency: int = 1
    rate: float = 100.0
    arrivals: Arrivals = "poisson"
    duration_s: float = 10.0
    warmup_s: float = 2.0
    grace_s: float = 10.0
    max_requests: int | None = None
    client: str = "raw"
    headers: dict[str, str] = field(default_factory=dict)
    seed: int = 1

    def settings(self) -> dict[str, Any]:
        """The spec as JSON-friendly data (the body shown as text)."""
        data = asdict(self)
        data["body"] = self.body.decode()
        data["headers"] = {
            k: ("<redacted>" if k.lower() == "authorization" else v)
            for k, v in self.headers.items()
        }
        return data


def chat_body(
    model: str,
    *,
    stream: bool = False,
    prompt: str = "Say hello.",
    max_tokens: int | None = None,
    stub: dict[str, float] | None = None,
    temperature: float | None = None,
) -> bytes:
    """A chat completion request body, encoded once for the whole run (a prompt holding
    :data:`benchmarks.clients.UNIQUE` differs in every request)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stub:
        body["stub"] = stub
    return orjson.dumps(body)


class _Run:
    """The state shared by the tasks of one run."""

    def __init__(self, spec: LoadSpec, client: Client, start: float) -> None:
        self.spec = spec
        self.client = client
        self.end = start + spec.warmup_s + spec.duration_s
        self.recorder = Recorder(start + spec.warmup_s, self.end)
        self.budget = spec.max_requests if spec.max_requests is not None else -1
        self.failure: Exception | None = None

    def take(self) -> bool:
        """Whether another request may still be sent (the count bound)."""
        if self.budget == 0:
            if self.recorder.stopped_at is None:
                self.recorder.stopped_at = perf_counter()
            return False
        self.budget -= 1
        return True

    async def one(self, scheduled: float) -> None:
        ex = self.recorder.exchange(scheduled, self.spec.stream)
        try:
            await self.client.send(ex)
        except asyncio.CancelledError:
            ex.finish(perf_counter(), "timeout")
            self.recorder.record(ex)
            raise
        except Exception as exc:  # a bug in a client: count it, and fail the run at the end
            self.failure = self.failure or exc
            ex.finish(perf_counter(), f"client_{type(exc).__name__}")
        self.recorder.record(ex)

    async def closed_worker(self) -> None:
        while perf_counter() < self.end and self.take():
            await self.one(perf_counter())

    async def open_scheduler(self, start: float, tasks: set[asyncio.Task[None]]) -> None:
        rng = random.Random(self.spec.seed)
        rate = self.spec.rate
        poisson = self.spec.arrivals == "poisson"
        due = start
        while due < self.end:
            now = perf_counter()
            while due <= now and due < self.end:  # launch everything already due
                if not self.take():
                    return
                task = asyncio.create_task(self.one(due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                due += rng.expovariate(rate) if poisson else 1.0 / rate
            await asyncio.sleep(max(0.0, due - perf_counter()))


async def run_load(spec: LoadSpec, label: str = "") -> RunResult:
    """Run ``spec`` in the current event loop and summarize it."""
    if spec.concurrency < 1 or spec.rate <= 0 or spec.duration_s <= 0 or spec.warmup_s < 0:
        raise ValueError("concurrency >= 1, rate > 0, duration > 0 and warmup >= 0 are required")
    client = make_client(spec.client, spec.url, spec.body, spec.headers, spec.concurrency)
    start = perf_counter()
    run = _Run(spec, client, start)
    tasks: set[asyncio.Task[None]] = set()
    if spec.mode == "closed":
        for _ in range(spec.concurrency):
            task = asyncio.create_task(run.closed_worker())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    else:
        await run.open_scheduler(start, tasks)
    try:
        if tasks:
            remaining = run.end + spec.grace_s - perf_counter()
            await asyncio.wait(set(tasks), timeout=max(0.0, remaining))
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()
    if run.failure is not None:
        raise RuntimeError("the load generator's client failed") from run.failure
    return result_of(label or spec.url, spec.settings(), run.recorder)


def run_blocking(spec: LoadSpec, label: str = "") -> RunResult:
    """Run ``spec`` in a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_load(spec, label))
    return uvloop.run(run_load(spec, label))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchmarks.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000/v1/chat/completions")
    parser.add_argument("--model", default="stub-model")
    parser.add_argument("--body", help="a raw JSON request body (overrides --model/--stream...)")
    parser.add_argument("--stream", action="store_true", help="request SSE streaming")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--stub", help='a JSON "stub" override, e.g. \'{"tokens": 32}\'')
    parser.add_argument("--mode", choices=("closed", "open"), default="closed")
    parser.add_argument(
        "-c", "--concurrency", type=int, default=1, help="closed: workers; open: connection limit"
    )
    parser.add_argument("-r", "--rate", type=float, default=100.0, help="open loop: requests/s")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("-w", "--warmup", type=float, default=2.0, help="excluded seconds first")
    parser.add_argument("--grace", type=float, default=10.0, help="wait for stragglers (s)")
    parser.add_argument("-n", "--max-requests", type=int, help="stop after sending this many")
    parser.add_argument("--client", choices=CLIENTS, default="raw")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stream = args.stream
    if args.body is not None:
        body = args.body.encode()
        stream = bool(orjson.loads(body).get("stream"))
    else:
        stub = orjson.loads(args.stub) if args.stub else None
        body = chat_body(args.model, stream=stream, max_tokens=args.max_tokens, stub=stub)
    headers = dict(h.split(":", 1) for h in args.header)
    spec = LoadSpec(
        url=args.url,
        body=body,
        stream=stream,
        mode=args.mode,
        concurrency=args.concurrency,
        rate=args.rate,
        arrivals=args.arrivals,
        duration_s=args.duration,
        warmup_s=args.warmup,
        grace_s=args.grace,
        max_requests=args.max_requests,
        client=args.client,
        headers={k.strip(): v.strip() for k, v in headers.items()},
    )
    result = run_blocking(spec)
    if args.json:
        sys.stdout.write(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from benchmarks.report import describe_run

        print(describe_run(result))
    return 1 if result.ok == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
