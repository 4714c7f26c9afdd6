"""Cheap before expensive: a key over its request rate is refused before its body is
read, and oversized requests are refused before validation (issue #13)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.backends.memory.limiter import MemoryLimiter
from gateway.errors import InvalidRequestError, RateLimitError, StoreUnavailable
from gateway.pipeline.denials import DenialMemo
from gateway.pipeline.plan import OFFLOAD_BYTES
from gateway.pipeline.results import Answer
from gateway.ratelimit.limits import Decision, LimiterBackend, retry_after_header
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import KEY, MODEL, chat_body, completion, world


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusal(kind: str, wait_s: float) -> RateLimitError:
    return RateLimitError("Rate limit reached", kind, retry_after_header(wait_s))


def test_a_request_rate_refusal_is_repeated_until_the_window_reopens() -> None:
    clock = Clock()
    memo = DenialMemo(clock)
    memo.check("team")  # nothing noted: passes
    memo.note("team", refusal("requests", 2.5))
    clock.now += 1.0
    with pytest.raises(RateLimitError) as caught:
        memo.check("team")
    assert caught.value.headers["retry-after-ms"] == "1500"
    assert caught.value.headers["Retry-After"] == "2"
    memo.check("other")  # other keys are not affected
    clock.now += 1.5
    memo.check("team")  # reopened
    assert len(memo) == 0


def test_token_and_concurrency_refusals_are_not_remembered() -> None:
    memo = DenialMemo(Clock())
    memo.note("team", refusal("tokens", 30))
    memo.note("team", refusal("concurrency", 30))
    memo.check("team")
    assert len(memo) == 0


def test_the_memo_is_bounded() -> None:
    clock = Clock()
    memo = DenialMemo(clock, max_keys=2)
    for name in ("a", "b", "c"):
        memo.note(name, refusal("requests", 10))
    assert len(memo) == 2
    memo.check("c")  # not remembered: no room
    clock.now += 11
    memo.note("c", refusal("requests", 10))  # expired entries make room
    with pytest.raises(RateLimitError):
        memo.check("c")


def ok(_: FakeRequest) -> Scripted:
    return Scripted(body=completion())


async def test_a_key_over_its_rate_is_refused_before_its_body_is_parsed() -> None:
    keys = [{"name": "team", "key": KEY, "rpm": 1}]
    w = world(ok, auth={"enabled": True, "keys": keys})
    assert isinstance(await w.ask(chat_body(), cache_control="no-store"), Answer)
    with pytest.raises(RateLimitError):
        await w.ask(chat_body(), cache_control="no-store")  # refused by the limiter
    with pytest.raises(RateLimitError):
        await w.ask(b"{not json at all")  # refused before parsing: no 400
    assert len(w.upstream.requests) == 1


async def test_per_model_limits_are_not_refused_before_parsing() -> None:
    keys = [{"name": "team", "key": KEY, "model_limits": {MODEL: {"rpm": 1}}}]
    w = world(ok, auth={"enabled": True, "keys": keys})
    await w.ask(chat_body(), cache_control="no-store")
    with pytest.raises(RateLimitError):
        await w.ask(chat_body(), cache_control="no-store")
    with pytest.raises(InvalidRequestError):  # the model is in the body: it must be read
        await w.ask(b"{not json at all")


async def test_too_many_messages_are_refused() -> None:
    w = world(ok, server={"max_messages": 3})
    messages = [{"role": "user", "content": "hi"}] * 4
    with pytest.raises(InvalidRequestError, match="at most 3 messages") as caught:
        await w.ask(chat_body(messages=messages))
    assert caught.value.param == "messages"
    assert w.upstream.requests == []
    w.assert_nothing_held()


async def test_too_much_text_is_refused() -> None:
    w = world(ok, server={"max_prompt_chars": 100})
    parts = [{"type": "text", "text": "x" * 60}, {"type": "text", "text": "y" * 60}]
    with pytest.raises(InvalidRequestError, match="exceeds 100 characters"):
        await w.ask(chat_body(messages=[{"role": "user", "content": parts}]))
    assert w.upstream.requests == []


async def test_a_large_body_is_validated_off_the_loop_and_answered() -> None:
    w = world(ok)
    text = "word " * (OFFLOAD_BYTES // 4)
    body = chat_body(messages=[{"role": "user", "content": text}])
    assert len(body) > OFFLOAD_BYTES
    result = await w.ask(body)
    assert isinstance(result, Answer)
    sent = orjson.loads(w.upstream.requests[0].body)
    assert sent["messages"][0]["content"] == text
    w.assert_nothing_held()


async def test_a_large_invalid_body_is_a_clean_400() -> None:
    w = world(ok)
    body = chat_body(messages=[{"role": 7, "content": "x" * OFFLOAD_BYTES}])
    with pytest.raises(InvalidRequestError, match="role"):
        await w.ask(body)
    w.assert_nothing_held()


async def test_the_caller_is_known_before_the_body_is_read() -> None:
    from gateway.errors import AuthenticationError
    from gateway.pipeline.plan import CHAT

    keys = [{"name": "team", "key": KEY, "rpm": 1}]
    w = world(ok, auth={"enabled": True, "keys": keys})
    with pytest.raises(AuthenticationError):
        await w.service.caller(CHAT, "Bearer sk-wrong-0123456789")
    principal = await w.service.caller(CHAT, f"Bearer {KEY}")
    assert principal.name == "team"
    await w.ask(chat_body(), cache_control="no-store")
    with pytest.raises(RateLimitError):
        await w.ask(chat_body(), cache_control="no-store")
    with pytest.raises(RateLimitError):  # over its rate: refused from the headers alone
        await w.service.caller(CHAT, f"Bearer {KEY}")
    refused = w.metrics.registry.get_sample_value(
        "vgate_requests_total",
        {"model": "-", "endpoint": "chat_completions", "status": "401", "variant": ""},
    )
    assert refused == 1.0


class Outage(MemoryLimiter):
    """The shared limiter (in memory), unreachable while :attr:`down`; this process's
    own limiter to fall back on."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.local = MemoryLimiter()

    def admit(self, *args: Any, **kwargs: Any) -> asyncio.Future[Decision]:
        if self.down:
            raise StoreUnavailable("redis is down")
        return super().admit(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        if self.down:
            raise StoreUnavailable("redis is down")
        super().settle(*args, **kwargs)

    @property
    def fallback(self) -> LimiterBackend:
        return self.local


async def test_a_local_refusal_is_not_repeated_once_redis_answers() -> None:
    """Redis down (``on_redis_error: local``, 2 replicas): this replica's share of 2 rpm
    is 1, so its second request is refused locally. Redis back, the shared limiter has
    counted none of them: the key is admitted at once (before: the memo repeated the
    local refusal for the rest of its window, up to a minute)."""
    shared = Outage()
    keys = [{"name": "team", "key": KEY, "rpm": 2}]
    ratelimit = {"on_redis_error": "local", "replicas_hint": 2}
    w = world(ok, shared, auth={"enabled": True, "keys": keys}, ratelimit=ratelimit)
    shared.down = True
    assert isinstance(await w.ask(chat_body(), cache_control="no-store"), Answer)
    with pytest.raises(RateLimitError) as caught:
        await w.ask(chat_body(), cache_control="no-store")
    assert caught.value.error_type == "requests"
    shared.down = False
    assert isinstance(await w.ask(chat_body(), cache_control="no-store"), Answer)
    assert len(w.upstream.requests) == 2


def test_a_refusal_decided_locally_is_not_remembered() -> None:
    memo = DenialMemo(Clock())
    local = refusal("requests", 30)
    local.local = True
    memo.note("team", local)
    memo.check("team")
    assert len(memo) == 0
