"""An answer the gateway capped is not another request's to have: in a cache shared
between keys (``cache.scope: shared``), a request whose ``max_tokens`` the gateway
added (a key with a token limit that asked for none gets
``ratelimit.default_max_tokens``) is keyed by the body the engine gets, cap included,
so a key without the limit (no cap) never gets its shortened answer, while keys with a
token limit share their capped answers with each other, and with a key that asked for
that many tokens itself. A budget that shortened the cap, or a cap that was not given
as keyed, keeps the answer out of the cache and out of flights. Per key, the same key
gets the same cap every time: its answers are kept for it as before."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.pipeline.plan import CHAT
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, Replay, Result
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import MODEL, World, completion, until, world

ALICE = "sk-alice-0123456789"  # a token limit
BOB = "sk-bobby-0123456789"  # a token limit too
CAROL = "sk-carol-0123456789"  # none
DORA = "sk-dora0-0123456789"  # a token limit too small for the default cap
DEFAULT_MAX = 3
BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
)


class Engine:
    """Stops at ``max_tokens`` when it is sent one, as vLLM does."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None

    def __call__(self, request: FakeRequest) -> Scripted:
        sent: Any = request.json()
        capped = "max_tokens" in sent
        text = "a long" if capped else "a long and whole answer"
        body: Any = orjson.loads(completion(text))
        body["choices"][0]["finish_reason"] = "length" if capped else "stop"
        return Scripted(body=orjson.dumps(body), gate=self.gate)


def capped_world(engine: Engine, scope: str) -> World:
    keys = [
        {"name": "alice", "key": ALICE, "tpm": 100_000},
        {"name": "bob", "key": BOB, "tpm": 50_000},
        {"name": "carol", "key": CAROL},
        {"name": "dora", "key": DORA, "tpm": 6},
    ]
    return world(
        engine,
        auth={"enabled": True, "keys": keys},
        cache={"enabled": True, "scope": scope},
        ratelimit={"default_max_tokens": DEFAULT_MAX},
    )


async def ask(w: World, key: str, body: bytes = BODY) -> Result:
    return await w.service.handle(CHAT, body, RequestMeta("req", f"Bearer {key}", None, None))


def finish(result: Result) -> str:
    assert isinstance(result, Answer | Replay)
    body = result.body if isinstance(result, Answer) else result.entry.replay()
    reason: str = orjson.loads(body)["choices"][0]["finish_reason"]
    return reason


async def test_a_shared_cache_keeps_no_answer_the_gateway_capped() -> None:
    w = capped_world(Engine(), "shared")
    alice = await ask(w, ALICE)
    assert isinstance(alice, Answer) and finish(alice) == "length"
    assert orjson.loads(w.upstream.requests[0].body)["max_tokens"] == DEFAULT_MAX
    carol = await ask(w, CAROL)
    assert isinstance(carol, Answer) and finish(carol) == "stop"  # from the engine
    assert "max_tokens" not in orjson.loads(w.upstream.requests[1].body)
    again = await ask(w, CAROL)  # carol's whole answer is kept, and shared
    assert isinstance(again, Replay) and finish(again) == "stop"
    alice_again = await ask(w, ALICE)  # her own capped answer, never carol's
    assert isinstance(alice_again, Replay) and finish(alice_again) == "length"
    assert len(w.upstream.requests) == 2
    w.assert_nothing_held()


async def test_keys_with_a_token_limit_share_their_capped_answers() -> None:
    w = capped_world(Engine(), "shared")
    assert finish(await ask(w, ALICE)) == "length"
    bob = await ask(w, BOB)  # the same body reaches the engine for bob: shared
    assert isinstance(bob, Replay) and finish(bob) == "length"
    asked = orjson.dumps(orjson.loads(BODY) | {"max_tokens": DEFAULT_MAX})
    carol = await ask(w, CAROL, asked)  # asked for the cap herself: the same request
    assert isinstance(carol, Replay) and finish(carol) == "length"
    assert len(w.upstream.requests) == 1
    w.assert_nothing_held()


async def test_a_budget_that_shortened_the_cap_keeps_the_answer_unshared() -> None:
    w = capped_world(Engine(), "shared")
    short = await ask(w, DORA)  # her budget (6 tokens) leaves 1 for the answer
    assert isinstance(short, Answer)
    assert orjson.loads(w.upstream.requests[0].body)["max_tokens"] < DEFAULT_MAX
    alice = await ask(w, ALICE)  # the full cap: not dora's shortened answer
    assert isinstance(alice, Answer) and len(w.upstream.requests) == 2
    assert orjson.loads(w.upstream.requests[1].body)["max_tokens"] == DEFAULT_MAX
    w.assert_nothing_held()


@pytest.mark.parametrize(
    ("second", "joins", "answer"),
    [(BOB, True, "length"), (CAROL, False, "stop")],
    ids=["a key with a token limit follows", "a key without one goes itself"],
)
async def test_who_follows_a_capped_request_in_a_shared_cache(
    second: str, joins: bool, answer: str
) -> None:
    engine = Engine()
    engine.gate = asyncio.Event()
    w = capped_world(engine, "shared")
    alice = asyncio.create_task(ask(w, ALICE))
    await until(lambda: len(w.upstream.requests) == 1)
    other = asyncio.create_task(ask(w, second))
    if joins:
        await until(lambda: sum(f.followers for f in w.service.flights.under_way()) == 1)
    else:
        await until(lambda: len(w.upstream.requests) == 2)  # went to the engine itself
    engine.gate.set()
    assert finish(await alice) == "length" and finish(await other) == answer
    assert len(w.upstream.requests) == (1 if joins else 2)
    w.assert_nothing_held()


async def test_a_cap_the_client_asked_for_is_shared() -> None:
    w = capped_world(Engine(), "shared")
    body = orjson.dumps(orjson.loads(BODY) | {"max_tokens": DEFAULT_MAX})
    assert finish(await ask(w, ALICE, body)) == "length"
    assert isinstance(await ask(w, CAROL, body), Replay)  # the same request as alice's
    assert len(w.upstream.requests) == 1


async def test_per_key_a_capped_answer_is_kept_for_its_key() -> None:
    w = capped_world(Engine(), "per_key")
    assert finish(await ask(w, ALICE)) == "length"
    again = await ask(w, ALICE)
    assert isinstance(again, Replay) and finish(again) == "length"
    carol = await ask(w, CAROL)
    assert isinstance(carol, Answer) and finish(carol) == "stop"
    assert len(w.upstream.requests) == 2
