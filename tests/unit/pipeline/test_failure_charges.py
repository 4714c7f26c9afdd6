"""What a request that fails without an answer costs its key's token limit.

Nothing, when no engine can have worked on it: an engine's error status, no engine
reachable. Its reservation, when it reached an engine that may have generated for
it: the engine did not answer in time (the whole answer, or a stream's first event)
or its answer broke off. Before, every failure was charged 0 tokens, so a tenant
whose requests always timed out got its whole budget back each time while the
engine generated until the gateway hung up (bug hunt: ~6x the tpm with a 2 s
``total_timeout_s``). A stream that breaks part way already kept its reservation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from gateway.pipeline.results import Answer
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import KEY, STREAM_EVENTS, World, chat_body, completion, world

TPM = 1_000
WANTED = 900  # two of these do not fit in a minute's budget


Handler = Callable[[FakeRequest], Scripted | Awaitable[Scripted]]


def limited_world(handler: Handler, **overrides: Any) -> World:
    keys = [{"name": "team", "key": KEY, "tpm": TPM}]
    return world(handler, auth={"enabled": True, "keys": keys}, **overrides)


async def next_cap(w: World) -> int:
    """The ``max_tokens`` the engine gets for the next request asking for WANTED:
    WANTED if the failed request's reservation was returned, less if it stands."""
    w.upstream.handler = lambda _: Scripted(body=completion())
    result = await w.ask(chat_body(max_tokens=WANTED), cache_control="no-cache")
    assert isinstance(result, Answer)
    cap: int = orjson.loads(w.upstream.requests[-1].body)["max_tokens"]
    w.assert_nothing_held()
    return cap


async def fail(w: World, stream: bool, expected: type[GatewayError]) -> None:
    with pytest.raises(expected):
        await w.ask(chat_body(stream=stream, max_tokens=WANTED), cache_control="no-cache")


async def test_an_answer_that_timed_out_keeps_its_reservation() -> None:
    async def slow(_: FakeRequest) -> Scripted:
        raise UpstreamTimeoutError("the engine did not answer within total_s = 2 s")

    w = limited_world(slow)
    await fail(w, False, UpstreamTimeoutError)
    assert await next_cap(w) < WANTED


async def test_a_first_event_that_timed_out_is_charged_its_prompt() -> None:
    """No token came: the engine may have read the prompt (a free prefill otherwise),
    it generated nothing the client got (the output reservation is returned)."""
    never = asyncio.Event()
    w = limited_world(
        lambda _: Scripted(events=STREAM_EVENTS, gate=never),
        upstream={"retries": 0, "ttft_timeout_s": 0.05},
    )
    long_prompt = [{"role": "user", "content": "x" * 1600}]  # ~400 tokens by the estimate
    with pytest.raises(UpstreamTimeoutError):
        body = chat_body(stream=True, max_tokens=500, messages=long_prompt)
        await w.ask(body, cache_control="no-cache")
    # 1,000 - ~405 charged leaves ~595: the next ~405-token prompt gets ~190 of its 500
    w.upstream.handler = lambda _: Scripted(body=completion())
    again = await w.ask(chat_body(max_tokens=500, messages=long_prompt), cache_control="no-cache")
    assert isinstance(again, Answer)
    cap = orjson.loads(w.upstream.requests[-1].body)["max_tokens"]
    assert 100 < cap < 500  # not refunded (500), not the whole reservation (refused)
    w.assert_nothing_held()


async def test_an_answer_that_broke_off_keeps_its_reservation() -> None:
    async def broken(_: FakeRequest) -> Scripted:
        raise UpstreamError("the engine closed the connection before the answer ended")

    w = limited_world(broken, upstream={"retries": 0})
    await fail(w, False, UpstreamError)
    assert await next_cap(w) < WANTED


@pytest.mark.parametrize("status", [400, 500])
async def test_an_engine_error_status_costs_nothing(status: int) -> None:
    w = limited_world(lambda _: Scripted(status=status, body=b'{"error": {"message": "no"}}'))
    await fail(w, False, GatewayError)
    assert await next_cap(w) == WANTED


async def test_no_engine_reachable_costs_nothing() -> None:
    w = limited_world(lambda _: Scripted(unreachable=True))
    await fail(w, True, GatewayError)
    assert await next_cap(w) == WANTED
