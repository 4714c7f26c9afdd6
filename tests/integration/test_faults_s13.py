"""Fault injection under a mixed load of the official async SDK: chat streamed and not,
and the Responses API (``store: true``) streamed and not, from several clients at once.

Faults: Redis paused (SIGSTOP, 3 s), its clients killed (``CLIENT KILL``), full
(``maxmemory`` 1 under ``noeviction``), killed and started again on its port with no
data; the engine killed mid-stream and started again, paused (SIGSTOP) past the read
deadline. Whatever happens, every client gets a complete answer or an OpenAI-shaped
error (a stream: an error event), never a stream that ends as if complete without
its end, and none waits past its deadline; afterwards nothing is counted in flight,
the key runs its ``max_concurrent`` requests at once again, ``/ready`` recovers, and
every response a client was given an id for while Redis answered (paused for less
than the store's 5 s deadline included) can be retrieved. SIGTERM with streams in
flight: drained, each finishes and its response is stored; cut at
``server.shutdown_timeout_s``, each gets ``shutting_down``; the slots are freed in
Redis either way.

Found here: an engine whose Responses stream turned to bytes that are not UTF-8 had
them relayed to the client (the SDK raised ``UnicodeDecodeError``, no error event);
the completion routes already ended such a stream with the gateway's error event, and
now the Responses route does too (``test_a_body_broken_half_way_...[garbage]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionUserMessageParam

from tests.helpers.hostile_engine import SSE_HEAD, ScriptedEngine
from tests.helpers.metrics_text import metric_sum
from tests.helpers.processes import free_port, run_process
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, Gateway, start_gateway
from tests.integration.test_operator_listener import _listening_pids
from tests.integration.test_shutdown import gateway_process

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


def _shaped(exc: openai.APIStatusError) -> bool:
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
        return done(_shaped(exc), f"{exc.status_code} {exc.response.content[:200]!r}")
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


@pytest.mark.parametrize(("policy", "workers"), [("local", 1), ("fail_closed", 1), ("local", 2)])
async def test_redis_faults_under_mixed_load_keep_every_promise(
    policy: str, workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    redis_port, engine_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        redis_stack = stack.enter_context(contextlib.ExitStack())
        redis_url = redis_stack.enter_context(run_redis(redis_port))
        stack.enter_context(stub_engine(engine_port))
        cfg = config(redis_url, f"http://127.0.0.1:{engine_port}")
        cfg["ratelimit"] = {"on_redis_error": policy}
        cfg["server"] = {"workers": workers}
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        async with running_load(gateway) as load:
            # 1. Paused for 3 s: shorter than the store's deadline, so nothing is lost.
            pid = redis_pid(redis_port)
            os.kill(pid, signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                await load.answers(len(KINDS))
                while time.monotonic() - paused_at < 3.0:
                    await asyncio.sleep(0.05)
            finally:
                os.kill(pid, signal.SIGCONT)
            await load.answers(len(KINDS))
            paused_ids: list[str] = [
                o.response_id
                for o in load.outcomes
                if o.response_id is not None and o.began >= paused_at - 1
            ]
            assert len(paused_ids) >= (2 if policy == "local" else 0), load.outcomes
            missing = {i: s for i in paused_ids if (s := await stored(gateway, i)) != 200}
            assert not missing, missing
            # 2. Its clients killed, several times.
            for _ in range(3):
                admin.client_kill_filter(_type="normal")
                await load.answers(3)
            # 3. Full: writes fail with OOM.
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)
            try:
                await load.answers(len(KINDS))
            finally:
                admin.config_set("maxmemory", 0)
            await load.answers(len(KINDS))
            # The key's stored bytes count exactly its records (none counted in vain).
            # (Read while the load writes: a record counted a moment before it is written.)
            await load.answers(len(KINDS))

            def counted_exactly() -> bool:
                sizes = {
                    (k.decode() if isinstance(k, bytes) else k): int(v)
                    for k, v in admin.hgetall("vgate:responses:owner:{faults}:size").items()
                }
                total = sizes.pop("#", 0)
                real = {i: admin.strlen(f"vgate:responses:{i}") for i in sizes}
                return sizes == real and total == sum(sizes.values())

            await condition(
                lambda: asyncio.to_thread(counted_exactly), 5.0, "a record counted in vain"
            )
            # 4. Killed, then started again on its port with no data.
            admin.close()
            redis_stack.close()
            await load.answers(len(KINDS))
            await asyncio.to_thread(redis_stack.enter_context, run_redis(redis_port))
            await condition(lambda: redis_reachable(gateway), 10.0, "redis never back")
            restarted_at = time.monotonic()

            async def storing_again() -> bool:  # fail_closed: 503 until the limiter retries
                return any(o.response_id and o.began > restarted_at for o in load.outcomes)

            await condition(storing_again, 10.0, "no response stored since the restart")
            await load.answers(len(KINDS))
        check_outcomes(load.outcomes)
        await condition(lambda: settled(gateway), 10.0, "not settled after the faults")
        restarted = redis.Redis.from_url(redis_url)
        stack.callback(restarted.close)
        await condition(
            lambda: asyncio.to_thread(lambda: restarted.zcard(SLOTS) == 0), 5.0, "slots left"
        )
        since = [o.response_id for o in load.outcomes if o.response_id and o.began > restarted_at]
        missing = {i: s for i in since if (s := await stored(gateway, i)) != 200}
        assert not missing, missing
        no_tracebacks(tmp_path)


async def test_engine_faults_under_mixed_load_keep_every_promise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    engine_port = free_port()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        engine_stack = stack.enter_context(contextlib.ExitStack())
        engine = engine_stack.enter_context(stub_engine(engine_port, "--itl-ms", "150"))
        cfg = config(redis_url, f"http://127.0.0.1:{engine_port}")
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        async with running_load(gateway) as load:
            # 1. Paused past the read deadline mid-stream, then resumed.
            os.kill(engine.pid, signal.SIGSTOP)
            try:
                await load.answers(len(KINDS))
            finally:
                os.kill(engine.pid, signal.SIGCONT)
            await load.answers(2 * len(KINDS))
            # 2. Killed mid-stream, then started again on its port.
            os.kill(engine.pid, signal.SIGKILL)
            await load.answers(len(KINDS))
            engine_stack.close()
            await asyncio.to_thread(engine_stack.enter_context, stub_engine(engine_port))
            await load.answers(2 * len(KINDS))
        check_outcomes(load.outcomes)
        cut = [o for o in load.outcomes if o.detail.startswith("error event")]
        assert cut, load.outcomes  # some streams were cut part way
        await condition(lambda: settled(gateway), 15.0, "not settled after the faults")
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        await condition(
            lambda: asyncio.to_thread(lambda: admin.zcard(SLOTS) == 0), 5.0, "slots left"
        )
        no_tracebacks(tmp_path)


async def _in_flight_at(engine_url: str, count: int) -> None:
    async def there() -> bool:
        stats = await asyncio.to_thread(lambda: httpx.get(f"{engine_url}/stub/stats").json())
        return bool(stats["in_flight"] >= count)

    await condition(there, 15.0, "the requests never reached the engine")


@pytest.mark.parametrize(("drain_s", "redis_pause_s"), [(15, 0), (1, 0), (15, 3)])
async def test_sigterm_with_streams_in_flight(
    drain_s: int, redis_pause_s: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams (chat and Responses) in flight at SIGTERM: with time enough they all
    finish and every stored response can be retrieved through another gateway (Redis
    paused meanwhile for less than the store's deadline included); cut at the deadline,
    each gets the ``shutting_down`` error (503, or an error event). Either way the
    gateway exits cleanly and frees its slots in Redis."""
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    engine_port = free_port()
    engine_url = f"http://127.0.0.1:{engine_port}"
    kinds = ["chat_stream", "resp_stream", "chat"] * 2  # a Responses answer is instant
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stack.enter_context(stub_engine(engine_port, "--itl-ms", "300", "--ttft-ms", "300"))
        cfg = config(redis_url, engine_url)
        cfg["server"] = {"shutdown_timeout_s": drain_s}
        cfg["upstream"]["read_timeout_s"] = 10  # a whole answer takes 2.4 s
        (gateway_dir := tmp_path / "first").mkdir()
        process, port, _, log_path = stack.enter_context(gateway_process(cfg, gateway_dir))
        first = Gateway(f"http://127.0.0.1:{port}")
        async with contextlib.AsyncExitStack() as clients:
            sdk = [
                await clients.enter_async_context(
                    openai.AsyncOpenAI(
                        base_url=first.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
                    )
                )
                for _ in kinds
            ]
            asked = [asyncio.create_task(ask(c, k)) for c, k in zip(sdk, kinds, strict=True)]
            await _in_flight_at(engine_url, len(kinds))
            redis_process = redis_pid(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
            if redis_pause_s:
                os.kill(redis_process, signal.SIGSTOP)
            process.send_signal(signal.SIGTERM)
            try:
                if redis_pause_s:
                    await asyncio.sleep(redis_pause_s)  # the fault's length: its very point
            finally:
                os.kill(redis_process, signal.SIGCONT)
            outcomes = await asyncio.gather(*asked)
        await asyncio.to_thread(process.wait, drain_s + 10)
        log = log_path.read_text()
        assert "Traceback" not in log, log[-4000:]
        if drain_s > 5:
            assert all(o.good and not o.detail for o in outcomes), outcomes
        else:
            assert all(o.good and "shutting_down" in o.detail for o in outcomes), outcomes
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        await condition(
            lambda: asyncio.to_thread(lambda: admin.zcard(SLOTS) == 0), 5.0, "slots left taken"
        )
        ids = [o.response_id for o in outcomes if o.response_id is not None]
        assert len(ids) == (2 if drain_s > 5 else 0), outcomes
        second = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        missing = {i: s for i in ids if (s := await stored(second, i)) != 200}
        assert not missing, missing


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chat_event(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [choice]}  # fmt: skip
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _responses_events(request: dict[str, Any]) -> bytes:
    response = {"id": request.get("request_id", "resp_x"), "object": "response", "created_at": 1,
                "model": "m", "status": "in_progress", "output": []}  # fmt: skip
    created = {"type": "response.created", "sequence_number": 0, "response": response}
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hel",
             "item_id": "msg_1", "output_index": 0, "content_index": 0, "logprobs": []}  # fmt: skip
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"  # type: ignore[attr-defined]
        for e in (created, delta)
    )


class BreakingEngine(ScriptedEngine):
    """Starts an answer (a stream's first events, or a JSON body's head) and then breaks
    its body as the mode says: ``bad_size`` (a chunk size that is no number),
    ``short_chunk`` (a chunk shorter than its size, then the connection closes),
    ``garbage`` (bytes that are not UTF-8, in a well-formed chunk, then the connection
    closes), ``clean_end`` (half an event, then the body's proper end); a JSON answer
    shorter than its content-length; ``garbage_head``: no HTTP at all."""

    model = STUB_MODEL

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        if mode == "garbage_head":
            writer.write(b"\x16\x03\x01 garbage, no status line\r\n\r\n" + b"\xff" * 100)
            await writer.drain()
            return False
        if not request.get("stream"):
            body = b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": ['
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 400\r\n\r\n" + body)  # fmt: skip
            await writer.drain()
            return False
        writer.write(SSE_HEAD)
        first = _chat_event("hel") if "messages" in request else _responses_events(request)
        writer.write(_chunk(first))
        await writer.drain()
        await asyncio.sleep(0.05)
        if mode == "bad_size":
            writer.write(b"zz\r\nnot a chunk\r\n")
        elif mode == "short_chunk":
            writer.write(b"200\r\n" + first[:20])
        elif mode == "clean_end":  # the body ends properly, the answer does not
            writer.write(_chunk(first[: len(first) // 2]) + b"0\r\n\r\n")
        else:
            writer.write(_chunk(b"\x00\x01 garbage that is no event \xfe\n\n") + _chunk(b"x" * 64))
        await writer.drain()
        return False


@pytest.mark.parametrize("upstream_client", ["lean", "aiohttp"])
@pytest.mark.parametrize(
    "mode", ["bad_size", "short_chunk", "garbage", "clean_end", "garbage_head"]
)
async def test_a_body_broken_half_way_is_an_error_never_a_complete_answer(
    mode: str, upstream_client: str, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(BreakingEngine())
        cfg = config("", engine.url)
        del cfg["redis"], cfg["auth"]
        cfg["upstream"]["client"] = upstream_client
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
        ) as client:
            text: ChatCompletionUserMessageParam = {"role": "user", "content": f"MODE:{mode}"}
            outcomes = []
            for kind in ("chat_stream", "resp_stream", "chat", "resp"):
                began = time.monotonic()
                try:
                    if kind == "chat_stream":
                        stream = await client.chat.completions.create(
                            model=STUB_MODEL, messages=[text], stream=True
                        )
                        chunks = [c async for c in stream]
                        outcomes.append((kind, False, f"ended quietly after {len(chunks)}"))
                    elif kind == "resp_stream":
                        events = await client.responses.create(
                            model=STUB_MODEL, input=f"MODE:{mode}", stream=True
                        )
                        seen = [e.type async for e in events]
                        outcomes.append((kind, False, f"ended quietly after {seen}"))
                    elif kind == "chat":
                        await client.chat.completions.create(model=STUB_MODEL, messages=[text])
                        outcomes.append((kind, False, "answered"))
                    else:
                        await client.responses.create(model=STUB_MODEL, input=f"MODE:{mode}")
                        outcomes.append((kind, False, "answered"))
                except openai.APIStatusError as exc:
                    outcomes.append((kind, _shaped(exc) and exc.status_code >= 500, str(exc)))
                except openai.APIConnectionError as exc:
                    outcomes.append((kind, False, f"cut: {exc!r}"))
                except openai.APIError as exc:  # an error event
                    outcomes.append((kind, bool(exc.message), f"event: {exc.message}"))
                assert time.monotonic() - began < DEADLINE_S - 1, kind
        assert all(good for _, good, _ in outcomes), outcomes
        in_flight = metric_sum(await asyncio.to_thread(gateway.metrics), "vgate_requests_in_flight")
        assert in_flight == 0


def _worker_connections(pid: int, port: int) -> int:
    """Established connections to ``port`` that process ``pid`` holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    held = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                held += os.readlink(fd) in inodes
    return held


async def test_a_worker_sigtermed_under_load_drains_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers, a load on both, streams in flight: one worker gets SIGTERM. Its
    streams finish (and are stored), the load goes on through the other with no
    error, and the supervisor starts a worker in its place."""
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    engine_port = free_port()
    engine_url = f"http://127.0.0.1:{engine_port}"
    kinds = ["chat_stream", "resp_stream"] * 4
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stack.enter_context(stub_engine(engine_port, "--itl-ms", "300", "--ttft-ms", "300"))
        cfg = config(redis_url, engine_url)
        cfg["server"] = {"shutdown_timeout_s": 15, "workers": 2}
        cfg["auth"]["keys"][0]["max_concurrent"] = 100  # the load and the streams
        cfg["upstream"]["read_timeout_s"] = 10
        process, port, admin_port, log_path = stack.enter_context(gateway_process(cfg, tmp_path))
        gateway = Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
        await condition(
            lambda: asyncio.to_thread(lambda: len(_listening_pids(admin_port)) == 2),
            30.0,
            "two workers serving",
        )
        workers = _listening_pids(admin_port)
        async with contextlib.AsyncExitStack() as clients, running_load(gateway) as load:
            sdk = [
                await clients.enter_async_context(
                    openai.AsyncOpenAI(
                        base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
                    )
                )
                for _ in kinds
            ]
            asked = [asyncio.create_task(ask(c, k)) for c, k in zip(sdk, kinds, strict=True)]
            await _in_flight_at(engine_url, len(kinds))
            busiest = max(workers, key=lambda pid: _worker_connections(pid, port))
            assert _worker_connections(busiest, port) > 0
            os.kill(busiest, signal.SIGTERM)
            outcomes = await asyncio.gather(*asked)
            await condition(
                lambda: asyncio.to_thread(
                    lambda: len(now := _listening_pids(admin_port)) == 2 and busiest not in now
                ),
                30.0,
                "the worker was not replaced",
            )
            await load.answers(len(KINDS))
        assert all(o.good and not o.detail for o in outcomes), outcomes
        check_outcomes(load.outcomes)
        ids = [o.response_id for o in outcomes if o.response_id is not None]
        missing = {i: s for i in ids if (s := await stored(gateway, i)) != 200}
        assert not missing, missing
        assert process.poll() is None
        assert "Traceback" not in log_path.read_text()


async def test_follow_ups_on_a_paused_redis_wait_one_store_deadline_not_a_queue_of_them(
    tmp_path: Path,
) -> None:
    """Follow-ups of one key load their previous record four at a time; with Redis
    paused, each waited the store's full deadline (5 s) in turn, so the twelfth was
    answered after 15 s. Now the first deadline that passes makes the reads behind it
    fail at once (503 ``response_store_unavailable``), and once Redis is back the
    conversation goes on."""
    follow_ups = 12
    engine_port = free_port()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stack.enter_context(stub_engine(engine_port))
        cfg = config(redis_url, f"http://127.0.0.1:{engine_port}")
        cfg["auth"]["keys"][0]["max_concurrent"] = 100
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=60
        ) as client:
            first = await client.responses.create(model=STUB_MODEL, input="hello")

            async def follow_up() -> tuple[float, str]:
                began = time.monotonic()
                try:
                    await client.responses.create(
                        model=STUB_MODEL, input="more", previous_response_id=first.id
                    )
                    return time.monotonic() - began, "answered"
                except openai.APIStatusError as exc:
                    code = exc.body.get("code") if isinstance(exc.body, dict) else None
                    return time.monotonic() - began, f"{exc.status_code} {code}"

            pid = redis_pid(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
            os.kill(pid, signal.SIGSTOP)
            try:
                answers = await asyncio.gather(*(follow_up() for _ in range(follow_ups)))
            finally:
                os.kill(pid, signal.SIGCONT)
            assert {a for _, a in answers} == {"503 response_store_unavailable"}, answers
            assert max(took for took, _ in answers) < 5.0 + 2.5, sorted(answers)

            async def goes_on() -> bool:
                return (await follow_up())[1] == "answered"

            await condition(goes_on, 10.0, "the conversation never went on")


class LargeGarbageEngine(ScriptedEngine):
    """Answers every request 200 ``application/json`` with 70 KiB that begin and end as
    a JSON object does but are none."""

    model = STUB_MODEL

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        body = b'{"id": "' + b"x" * 70_000 + b'" no JSON }'
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        writer.write(head % len(body) + body)
        await writer.drain()
        return True


def test_a_large_responses_answer_that_is_no_json_is_a_502(tmp_path: Path) -> None:
    """Answers over 64 KiB are only checked to begin and end as an object; the Responses
    route parses its answer whole all the same, and relayed one that was not JSON as a
    200 (the SDK failed on it). Now a 502 in OpenAI's shape, as a smaller one is."""
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(LargeGarbageEngine())
        cfg = {"models": [{"name": STUB_MODEL, "endpoints": [engine.url]}]}
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        answer = httpx.post(
            f"{gateway.base_url}/responses", json={"model": STUB_MODEL, "input": "hi"}, timeout=10
        )
        assert answer.status_code == 502, answer.content[:200]
        assert answer.json()["error"]["code"] == "bad_gateway"
        in_flight = metric_sum(gateway.metrics(), "vgate_requests_in_flight")
        assert in_flight == 0
