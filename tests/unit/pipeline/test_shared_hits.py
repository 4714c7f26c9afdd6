"""A shared cache's hits, and its followers of another key's request in flight, look to
their tenant like answers the engine just made: the same ``Server-Timing`` entries as a
miss, this request's ``created``, and an id of the form vLLM gives a fresh answer
(``chatcmpl-`` and the ``X-Request-Id`` the gateway sent). Per key, hits still say so."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
import pytest

from gateway.cache.entry import find_answer_id
from gateway.pipeline.plan import CHAT
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, EventStream, Replay, Result
from gateway.upstream.fake import FakeRequest, Scripted, sse
from tests.unit.pipeline.world import KEY, MODEL, World, chat_body, drain, until, world

KEY_B = "sk-other-0123456789"
LONG_AGO = 1_700_000_000


class Vllm:
    """Answers as vLLM does: the answer's id is ``chatcmpl-`` and the request's
    ``X-Request-Id``; ``created`` is the engine's clock, :attr:`clock`."""

    def __init__(self) -> None:
        self.clock = LONG_AGO
        self.gate: asyncio.Event | None = None

    def __call__(self, request: FakeRequest) -> Scripted:
        head = {
            "id": "chatcmpl-" + request.headers["X-Request-Id"],
            "created": self.clock,
            "model": MODEL,
        }
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if not request.stream:
            message = {"role": "assistant", "content": "hello"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            body = head | {"object": "chat.completion", "choices": [choice], "usage": usage}
            return Scripted(body=orjson.dumps(body), gate=self.gate)

        def event(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return head | {"object": "chat.completion.chunk", "choices": [choice]}

        events = [
            sse(event({"role": "assistant", "content": ""}), done=False),
            sse(event({"content": "hel"}), done=False),
            sse(event({}, "stop"), head | {"choices": [], "usage": usage}),
        ]
        return Scripted(events=events, gate=self.gate, gate_each_batch=self.gate is not None)


def shared_world(engine: Vllm, scope: str = "shared") -> World:
    keys = [
        {"name": "team", "key": KEY, "tpm": 100_000},
        {"name": "other", "key": KEY_B, "tpm": 100_000},
    ]
    return world(
        engine, auth={"enabled": True, "keys": keys}, cache={"enabled": True, "scope": scope}
    )


async def ask(w: World, key: str, body: bytes) -> Result:
    return await w.service.handle(CHAT, body, RequestMeta("req", f"Bearer {key}", None, None))


async def sent(result: Result) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The body and headers the client gets (a replay as the HTTP edge writes it)."""
    if isinstance(result, Replay):
        return result.entry.replay(result.include_usage), result.headers
    if isinstance(result, EventStream):
        return await drain(result), result.headers
    assert isinstance(result, Answer)
    return result.body, result.headers


def timing_names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    value = dict(headers)[b"server-timing"].decode()
    return [part.split(";")[0].strip() for part in value.split(",")]


def shape(answer_id: str) -> str:
    return re.sub(r"[0-9a-f]", "h", answer_id)


def look(body: bytes) -> tuple[str, set[int]]:
    """The answer's id (every event's, the same) and its ``created`` values."""
    answer_id = find_answer_id(body)
    assert answer_id is not None
    assert set(re.findall(rb'"id":"([^"]+)"', body)) == {answer_id.encode()}
    return answer_id, {int(c) for c in re.findall(rb'"created":(\d+)', body)}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_shared_hit_looks_like_a_miss(stream: bool) -> None:
    engine = Vllm()
    w = shared_world(engine)
    await sent(await ask(w, KEY, chat_body(stream)))  # the other tenant asked long ago
    engine.clock = before = int(time.time())
    hit = await ask(w, KEY_B, chat_body(stream))
    miss = await ask(w, KEY_B, chat_body(stream, max_tokens=9))
    after = int(time.time())
    assert isinstance(hit, Replay) and not isinstance(miss, Replay)
    assert len(w.upstream.requests) == 2
    (hit_body, hit_headers), (miss_body, miss_headers) = await sent(hit), await sent(miss)
    assert timing_names(hit_headers) == timing_names(miss_headers) == ["auth", "limit", "cache"]
    (hit_id, hit_created), (miss_id, miss_created) = look(hit_body), look(miss_body)
    assert miss_created == {engine.clock} and len(hit_created) == 1
    assert before <= hit_created.pop() <= after
    assert miss_id.startswith("chatcmpl-vgate-") and shape(hit_id) == shape(miss_id)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_shared_follower_looks_like_a_miss(stream: bool) -> None:
    """Another key's identical request is at the engine: its answer is shared, under
    this request's time and an id of a fresh answer's form."""
    engine = Vllm()
    engine.gate = asyncio.Event()
    w = shared_world(engine)
    leader = asyncio.create_task(ask(w, KEY, chat_body(stream)))
    await until(lambda: len(w.upstream.requests) == 1)
    leading = None
    if stream:  # the leader's first event goes out: the follower joins mid-stream
        leading = asyncio.create_task(sent(await leader))
    before = int(time.time())
    follower = asyncio.create_task(ask(w, KEY_B, chat_body(stream)))
    await until(lambda: sum(f.followers for f in w.service.flights.under_way()) == 1)
    engine.gate.set()
    followed_body, followed_headers = await sent(await follower)
    after = int(time.time())
    await (leading if leading is not None else leader)
    engine.gate, engine.clock = None, int(time.time())
    miss_body, miss_headers = await sent(await ask(w, KEY_B, chat_body(stream, max_tokens=9)))
    assert len(w.upstream.requests) == 2
    assert timing_names(followed_headers) == timing_names(miss_headers)
    (followed_id, followed_created), (miss_id, _) = look(followed_body), look(miss_body)
    assert len(followed_created) == 1 and before <= followed_created.pop() <= after
    assert shape(followed_id) == shape(miss_id)
    w.assert_nothing_held()


async def test_per_key_hits_still_say_what_they_are() -> None:
    engine = Vllm()
    w = shared_world(engine, scope="per_key")
    await sent(await ask(w, KEY, chat_body()))
    hit, miss = await ask(w, KEY, chat_body()), await ask(w, KEY, chat_body(max_tokens=9))
    (hit_body, hit_headers), (_, miss_headers) = await sent(hit), await sent(miss)
    assert timing_names(hit_headers) == ["auth", "limit", "cache"]
    assert timing_names(miss_headers) == ["auth", "limit", "cache", "queue", "upstream"]
    assert dict(hit_headers)[b"x-cache"] == b"HIT"
    hit_id, hit_created = look(hit_body)
    assert hit_created == {LONG_AGO} and re.fullmatch(r"chatcmpl-[0-9a-f]{32}", hit_id)
