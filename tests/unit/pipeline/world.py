"""A whole completion pipeline in one process: the real stages, in-memory stores,
and :class:`FakeUpstream` in place of the engines.

:meth:`World.assert_nothing_held` is the check every exit-path test ends with:
no engine slot, no open stream, no flight, no concurrency slot, no in-flight
request left behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from gateway.auth.authenticator import build_authenticator
from gateway.backends.memory.cache import MemoryEntryStore
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.assembly import build_completion_service
from gateway.pipeline.plan import CHAT
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, EventStream, Replay, Result
from gateway.pipeline.service import CompletionService
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.limits import LimiterBackend
from gateway.upstream.fake import FakeRequest, FakeUpstream, Scripted, sse

MODEL = "m"
ENGINES = ("http://engine-a", "http://engine-b")
KEY = "sk-test-0123456789"
AUTH = f"Bearer {KEY}"
T = TypeVar("T")


def settings(**overrides: Any) -> Settings:
    """Two engines, auth on with one key (one concurrent request), cache on."""
    base: dict[str, Any] = {
        "models": [{"name": MODEL, "endpoints": list(ENGINES)}],
        "auth": {
            "enabled": True,
            "keys": [{"name": "team", "key": KEY, "max_concurrent": 1, "tpm": 100_000}],
        },
        "cache": {"enabled": True},
        "upstream": {"retries": 1, "ttft_timeout_s": 5.0},
    }
    base.update(overrides)
    return Settings.model_validate(base)


def chat_body(stream: bool = False, **extra: Any) -> bytes:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 8,
        "stream": stream,
    }
    return orjson.dumps(body | extra)


def completion(text: str = "hello") -> bytes:
    return orjson.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )


def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": MODEL,
    "choices": [],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
STREAM_EVENTS = (
    sse(chunk("hel"), done=False),
    sse(chunk("lo"), done=False),
    sse(chunk(None, "stop"), USAGE_CHUNK),
)


@dataclass
class World:
    service: CompletionService
    upstream: FakeUpstream
    pool: EnginePool
    admission: Admission
    metrics: GatewayMetrics

    async def ask(self, body: bytes, cache_control: str | None = None) -> Result:
        meta = RequestMeta("req-1", AUTH, None, cache_control)
        return await self.service.handle(CHAT, body, meta)

    def assert_nothing_held(self) -> None:
        assert [s.in_flight for s in self.pool.states()] == [0] * len(ENGINES)
        assert self.upstream.open_streams == set()
        assert len(self.service.flights) == 0
        assert self.admission.leased == 0
        gauge = self.metrics.registry.get_sample_value("vgate_requests_in_flight", {"model": MODEL})
        assert gauge in (None, 0.0)


def world(
    handler: Callable[[FakeRequest], Scripted | Awaitable[Scripted]],
    limiter: LimiterBackend | None = None,
    **overrides: Any,
) -> World:
    """``limiter``: the shared limiter (default: an in-memory one)."""
    config = settings(**overrides)
    metrics = GatewayMetrics()
    pool = EnginePool({m.name: m.endpoints for m in config.models})
    upstream = FakeUpstream(handler)
    admission = Admission(limiter or MemoryLimiter(), config.ratelimit, metrics)
    authenticator = build_authenticator(config.auth, None)
    service = build_completion_service(
        config, pool, upstream, metrics, authenticator, admission, MemoryEntryStore(1 << 20)
    )
    return World(service, upstream, pool, admission, metrics)


async def drain(stream: EventStream) -> bytes:
    """Every event of ``stream`` as the HTTP edge would send it, then close it."""
    out = b""
    try:
        async for batch in stream.events:
            out += batch
    finally:
        stream.close()
    return out


def body_of(result: Result) -> bytes:
    assert isinstance(result, Answer | Replay)
    return result.body if isinstance(result, Answer) else result.entry.encode()


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait (yielding to the loop) until ``condition()`` holds."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0)
