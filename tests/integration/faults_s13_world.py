"""The fault hunt's world (s13): a mixed load of the official async SDK (chat streamed
and not, the Responses API with ``store`` streamed and not) through a real gateway with
Redis and a stub engine, and what every test checks afterwards: each answer complete or
an OpenAI-shaped error (a stream: an error event), none past its deadline, nothing in
flight, the key's slots free, ``/ready`` 200, no traceback and no worker dead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import redis
from openai.types.chat import ChatCompletionUserMessageParam

from tests.helpers.metrics_text import metric_sum
from tests.helpers.processes import run_process
from tests.integration.conftest import STUB_MODEL, Gateway

KEY = "sk-faults-s13-0123456789"
SLOTS = "vgate:rl:{faults}:slots"
"""The key's concurrency slots in Redis (a lease per request in flight)."""
MAX_CONCURRENT = 3
READ_TIMEOUT_S = 1.5
DEADLINE_S = 15.0
"""No client waits longer (the SDK's own timeout): Redis calls give up after 0.5 s,
the store's after 5 s, the engine's read after 1.5 s; generous for 2 loaded cores."""
KINDS = ("chat_stream", "chat", "resp_stream", "resp", "resp_stream", "resp")


@dataclass(slots=True)
class Outcome:
    kind: str
    good: bool  # complete, or an OpenAI-shaped error / an error event
    took: float
    detail: str = ""
    response_id: str | None = None  # a stored response the client was given
    began: float = 0.0


@dataclass(slots=True)
class Load:
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def answers(self, more: int = 6, within_s: float = 20.0) -> None:
        """Wait until ``more`` further requests have ended."""
        target = len(self.outcomes) + more
        deadline = time.monotonic() + within_s
        while len(self.outcomes) < target:
            assert time.monotonic() < deadline, f"no answers: {self.outcomes[-5:]}"
            await asyncio.sleep(0.02)


def shaped(exc: openai.APIStatusError) -> bool:
    try:
        error = json.loads(exc.response.content)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and all(k in error for k in ("message", "type", "code"))


async def ask(client: openai.AsyncOpenAI, kind: str) -> Outcome:
    began = time.monotonic()

    def done(good: bool, detail: str = "", response_id: str | None = None) -> Outcome:
        return Outcome(kind, good, time.monotonic() - began, detail, response_id, began)

    def answered(complete: bool, why_not: str, response_id: str | None = None) -> Outcome:
        return done(complete, "" if complete else why_not, response_id)

    text: ChatCompletionUserMessageParam = {"role": "user", "content": "hello there"}
    try:
        if kind == "chat_stream":
            finish = None
            stream = await client.chat.completions.create(
                model=STUB_MODEL, messages=[text], max_tokens=8, stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            return answered(finish is not None, "ended with no finish_reason")
        if kind == "chat":
            answer = await client.chat.completions.create(
                model=STUB_MODEL, messages=[text], max_tokens=8
            )
            return answered(answer.choices[0].finish_reason is not None, "no finish_reason")
        if kind == "resp_stream":
            completed = None
            events = await client.responses.create(
                model=STUB_MODEL, input="hello there", max_output_tokens=8, stream=True
            )
            async for event in events:
                if event.type == "response.completed":
                    completed = event.response.id
            return answered(completed is not None, "ended with no response.completed", completed)
        response = await client.responses.create(
            model=STUB_MODEL, input="hello there", max_output_tokens=8
        )
        return answered(response.status == "completed", f"status {response.status}", response.id)
    except openai.APITimeoutError:
        return done(False, "hung past the deadline")
    except openai.APIStatusError as exc:
        return done(shaped(exc), f"{exc.status_code} {exc.response.content[:200]!r}")
    except openai.APIConnectionError as exc:
        return done(False, f"cut with no error: {exc!r}")
    except openai.APIError as exc:  # an error event ended the stream
        return done(bool(exc.message), f"error event: {exc.message} {exc.body}")
    except Exception as exc:
        return done(False, f"unexpected: {exc!r}")


async def client_loop(gateway: Gateway, kind: str, load: Load) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
    ) as client:
        while not load.stop.is_set():
            load.outcomes.append(await ask(client, kind))


@contextlib.asynccontextmanager
async def running_load(gateway: Gateway) -> Any:
    load = Load()
    tasks = [asyncio.create_task(client_loop(gateway, kind, load)) for kind in KINDS]
    try:
        await load.answers(len(KINDS))
        yield load
    finally:
        load.stop.set()
        await asyncio.gather(*tasks)


def check_outcomes(outcomes: list[Outcome]) -> None:
    bad = [o for o in outcomes if not o.good]
    assert not bad, bad
    slowest = max(outcomes, key=lambda o: o.took)
    assert slowest.took < DEADLINE_S - 1, slowest


async def condition(check: Callable[[], Awaitable[bool]], within_s: float, message: str) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.05)


async def all_slots_free(gateway: Gateway) -> bool:
    """``MAX_CONCURRENT`` streams of the key at once, all admitted."""
    async with httpx.AsyncClient(timeout=DEADLINE_S) as http:

        async def one() -> int:
            body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 4, "stream": True}  # fmt: skip
            headers = {"Authorization": f"Bearer {KEY}"}
            url = f"{gateway.base_url}/chat/completions"
            async with http.stream("POST", url, json=body, headers=headers) as r:
                await r.aread()
                return r.status_code

        return all(s == 200 for s in await asyncio.gather(*(one() for _ in range(MAX_CONCURRENT))))


async def settled(gateway: Gateway) -> bool:
    """Nothing in flight, Redis and the engine fine by /ready, every slot free."""

    def look() -> tuple[float, dict[str, Any], int]:
        metrics = gateway.metrics()
        public = httpx.get(f"{gateway.url}/ready").status_code
        in_flight = metric_sum(metrics, "vgate_requests_in_flight")
        in_flight += metric_sum(metrics, "vgate_engine_in_flight")  # the pool's count too
        return in_flight, gateway.ready(), public

    in_flight, ready, public = await asyncio.to_thread(look)
    if in_flight != 0 or ready.get("redis") != "reachable" or public != 200:
        return False
    return await all_slots_free(gateway)


async def stored(gateway: Gateway, response_id: str) -> int:
    """Retrieval's status; a 503 or 429 just after a fault (Redis known down a moment
    longer, slots a resumed Redis ran and the gateway has yet to free) asked again."""
    deadline = time.monotonic() + 10.0
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
    ) as client:
        while True:
            try:
                got = await client.responses.retrieve(response_id)
            except openai.APIStatusError as exc:
                if exc.status_code in (429, 503) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    continue
                return exc.status_code
            assert got.id == response_id
            return 200


def no_tracebacks(tmp_path: Path) -> None:
    """No gateway process (kept logs, ``TEST_PROCESS_LOG_DIR``) logged a traceback, and
    no worker died."""
    logs = [p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*gateway-serve*")]
    assert logs
    for log in logs:
        assert "Traceback" not in log, log[-4000:]
        assert "died" not in log, log[-4000:]  # a worker (with server.workers > 1)


async def redis_reachable(gateway: Gateway) -> bool:
    ready = await asyncio.to_thread(gateway.ready)
    return ready.get("redis") == "reachable"


def config(redis_url: str, engine_url: str) -> dict[str, Any]:
    return {
        "models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
        "redis": {"url": redis_url, "timeout_s": 0.5, "retry_s": 0.2},
        "upstream": {"read_timeout_s": READ_TIMEOUT_S, "health_interval_s": 0.3, "retries": 1},
        "auth": {
            "enabled": True,
            "keys": [
                {
                    "name": "faults",
                    "key": KEY,
                    "rpm": 1_000_000,
                    "tpm": 100_000_000,
                    "max_concurrent": MAX_CONCURRENT + len(KINDS),
                }
            ],
        },
    }


@contextlib.contextmanager
def stub_engine(port: int, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "engines.stub", "--port", str(port), "--model", STUB_MODEL,
            "--itl-ms", "25", "--tokens", "8", *flags]  # fmt: skip
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30) as process:
        yield process


def redis_pid(port: int) -> int:
    info = redis.Redis(port=port).info("server")
    return int(info["process_id"])


async def in_flight_at(engine_url: str, count: int) -> None:
    async def there() -> bool:
        stats = await asyncio.to_thread(lambda: httpx.get(f"{engine_url}/stub/stats").json())
        return bool(stats["in_flight"] >= count)

    await condition(there, 15.0, "the requests never reached the engine")
