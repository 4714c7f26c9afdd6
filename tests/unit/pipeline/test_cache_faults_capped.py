"""An answer the gateway capped is not another key's to have: in a cache shared
between keys (``cache.scope: shared``), a request whose ``max_tokens`` the gateway
added (a key with a token limit that asked for none gets
``ratelimit.default_max_tokens``) neither fills the cache nor leads a flight, so a key
without the limit never gets its shortened answer. Per key, the same key gets the same
cap every time: its answers are kept for it as before."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.pipeline.plan import CHAT
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, Replay, Result
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import MODEL, World, completion, until, world

ALICE = "sk-alice-0123456789"  # a token limit
CAROL = "sk-carol-0123456789"  # none
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
        {"name": "carol", "key": CAROL},
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
    assert isinstance(await ask(w, ALICE), Replay)
    assert len(w.upstream.requests) == 2
    w.assert_nothing_held()


async def test_no_key_follows_a_capped_request_in_a_shared_cache() -> None:
    engine = Engine()
    engine.gate = asyncio.Event()
    w = capped_world(engine, "shared")
    alice = asyncio.create_task(ask(w, ALICE))
    await until(lambda: len(w.upstream.requests) == 1)
    carol = asyncio.create_task(ask(w, CAROL))
    await until(lambda: len(w.upstream.requests) == 2)  # went to the engine itself
    engine.gate.set()
    assert finish(await alice) == "length" and finish(await carol) == "stop"
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
